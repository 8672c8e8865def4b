/* libc_interop.c: memory allocated inside glibc (strdup, asprintf, getline, open_memstream,
 * stdio buffers, scandir, regcomp, realpath, getcwd, dlopen, setenv, qsort) is served and
 * freed by rsmalloc; allocation from a constructor before main works. */
#include "common.h"

#include <dirent.h>
#include <regex.h>
#include <limits.h>

static void *ctor_block;
static size_t ctor_n = 777;

__attribute__((constructor)) static void early(void)
{
    ctor_block = malloc(ctor_n);
    if (ctor_block) memset(ctor_block, 0x77, ctor_n);
    free(malloc(100000));
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int main(void)
{
    rs_check_loaded("libc_interop");
    CHECK(ctor_block != NULL, "malloc in constructor failed");
    if (ctor_block) {
        for (size_t i = 0; i < ctor_n; i++)
            if (((unsigned char *)ctor_block)[i] != 0x77) {
                FAILF("constructor block corrupted");
                break;
            }
        free(ctor_block);
    }
    for (int i = 0; i < 1000; i++) {
        char *s = strdup("hello, allocator");
        CHECK(s && strcmp(s, "hello, allocator") == 0, "strdup");
        char *t = strndup("abcdefgh", 3 + i % 5);
        CHECK(t && strlen(t) == (size_t)(3 + i % 5), "strndup");
        char *a = NULL;
        int n = asprintf(&a, "%d-%s-%0*d", i, s, i % 300, 7);
        CHECK(n > 0 && a && (int)strlen(a) == n, "asprintf");
        free(s);
        free(t);
        free(a);
    }
    /* open_memstream growing to several MiB */
    char *buf = NULL;
    size_t len = 0;
    FILE *ms = open_memstream(&buf, &len);
    CHECK(ms != NULL, "open_memstream");
    if (ms) {
        for (int i = 0; i < 200000; i++) fprintf(ms, "line %d\n", i);
        fclose(ms);
        CHECK(len > 1000000 && buf && strncmp(buf, "line 0\nline 1\n", 14) == 0, "open_memstream content");
        free(buf);
    }
    /* getline from a tmpfile, stdio buffers */
    FILE *f = tmpfile();
    CHECK(f != NULL, "tmpfile");
    if (f) {
        for (int i = 0; i < 5000; i++) {
            for (int j = 0; j < i % 300; j++) fputc('a' + j % 26, f);
            fputc('\n', f);
        }
        rewind(f);
        char *line = NULL;
        size_t cap = 0;
        ssize_t r;
        int lines = 0;
        while ((r = getline(&line, &cap, f)) > 0) {
            CHECK(r == lines % 300 + 1, "getline length %zd at line %d", r, lines);
            lines++;
        }
        CHECK(lines == 5000, "getline read %d lines", lines);
        free(line);
        fclose(f);
    }
    for (int i = 0; i < 200; i++) {
        FILE *g = fopen("/proc/self/status", "r");
        CHECK(g != NULL, "fopen");
        if (!g) break;
        setvbuf(g, NULL, _IOFBF, 1 << (10 + i % 8));
        char tmp[256];
        while (fgets(tmp, sizeof tmp, g)) {}
        fclose(g);
    }
    struct dirent **ents;
    int ne = scandir("/proc/self", &ents, NULL, alphasort);
    CHECK(ne > 5, "scandir returned %d", ne);
    for (int i = 0; i < ne; i++) free(ents[i]);
    if (ne >= 0) free(ents);
    for (int i = 0; i < 200; i++) {
        regex_t re;
        int e = regcomp(&re, "^([a-z]+)-([0-9]{2,})(x|y)*$", REG_EXTENDED);
        CHECK(e == 0, "regcomp");
        if (e) break;
        regmatch_t m[4];
        CHECK(regexec(&re, "abc-1234xyx", 4, m, 0) == 0, "regexec");
        regfree(&re);
    }
    char *rp = realpath("/proc/self/../self/.", NULL);
    CHECK(rp != NULL, "realpath");
    free(rp);
    char *cwd = getcwd(NULL, 0);
    CHECK(cwd != NULL, "getcwd");
    free(cwd);
    for (int i = 0; i < 2000; i++) {
        char name[32], val[64];
        snprintf(name, sizeof name, "RS_TEST_VAR_%d", i % 300);
        snprintf(val, sizeof val, "value-%d", i);
        setenv(name, val, 1);
        if (i % 7 == 0) unsetenv(name);
    }
    for (int i = 0; i < 50; i++) {
        void *h = dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
        CHECK(h != NULL, "dlopen libm: %s", dlerror());
        if (!h) break;
        double (*cosp)(double) = (double (*)(double))dlsym(h, "cos");
        CHECK(cosp && cosp(0.0) == 1.0, "dlsym cos");
        dlclose(h);
        CHECK(dlopen("/nonexistent/libnothing.so", RTLD_NOW) == NULL, "dlopen of missing lib");
        (void)dlerror();
    }
    enum { QN = 1 << 20 };
    int *arr = malloc(QN * sizeof(int));
    uint64_t rng = 3;
    for (int i = 0; i < QN; i++) arr[i] = (int)(rs_rand(&rng) >> 33);
    qsort(arr, QN, sizeof(int), cmp_int);
    int sorted = 1;
    for (int i = 1; i < QN; i++)
        if (arr[i - 1] > arr[i]) sorted = 0;
    CHECK(sorted, "qsort");
    free(arr);
    return rs_summary("libc_interop");
}

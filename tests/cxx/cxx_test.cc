// C++ under rsmalloc: every operator new/delete form is rsmalloc's, containers and threads
// work, and exhaustion behaves as the standard says (new-handler, std::bad_alloc, nothrow
// null). Exits non-zero with a FAIL line on any failure.
#include <dlfcn.h>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

static int failures = 0;
#define CHECK(c, ...) do { if (!(c)) { std::printf("FAIL %s:%d: ", __FILE__, __LINE__); std::printf(__VA_ARGS__); std::printf("\n"); failures++; } } while (0)

static const char *owner(void *fn) {
    Dl_info i;
    return dladdr(fn, &i) && i.dli_fname ? i.dli_fname : "?";
}

static std::atomic<int> handler_calls{0};
static void handler() {
    handler_calls++;
    std::set_new_handler(nullptr);  // next failure throws
}

struct alignas(256) Wide { char b[256]; };

int main() {
    CHECK(dlsym(RTLD_DEFAULT, "rsmalloc_version") != nullptr, "rsmalloc not loaded");
    void *(*plain_new)(std::size_t) = &::operator new;
    void (*sized_delete)(void *, std::size_t) = &::operator delete;
    void *(*aligned_new)(std::size_t, std::align_val_t) = &::operator new;
    CHECK(std::strstr(owner((void *)plain_new), "librsmalloc"), "operator new is from %s", owner((void *)plain_new));
    CHECK(std::strstr(owner((void *)sized_delete), "librsmalloc"), "sized delete is from %s", owner((void *)sized_delete));
    CHECK(std::strstr(owner((void *)aligned_new), "librsmalloc"), "aligned new is from %s", owner((void *)aligned_new));

    // every form
    int *a = new int(7); delete a;
    int *arr = new int[100]; arr[99] = 1; delete[] arr;
    Wide *w = new Wide; CHECK(((uintptr_t)w & 255) == 0, "aligned new misaligned %p", (void *)w); delete w;
    Wide *wa = new Wide[3]; CHECK(((uintptr_t)wa & 255) == 0, "aligned new[] misaligned"); delete[] wa;
    int *nt = new (std::nothrow) int(3); CHECK(nt && *nt == 3, "nothrow new"); delete nt;
    void *p = ::operator new(1000, std::align_val_t(4096)); CHECK(((uintptr_t)p & 4095) == 0, "align 4096");
    ::operator delete(p, 1000, std::align_val_t(4096));
    p = ::operator new[](64, std::align_val_t(64), std::nothrow); CHECK(p && ((uintptr_t)p & 63) == 0, "nothrow aligned");
    ::operator delete[](p, std::align_val_t(64), std::nothrow);

    // containers and threads
    std::vector<std::thread> ts;
    std::atomic<long> sum{0};
    for (int t = 0; t < 8; t++)
        ts.emplace_back([t, &sum] {
            std::map<int, std::string> m;
            for (int i = 0; i < 20000; i++) {
                m[i] = std::string(i % 300, char('a' + (i + t) % 26));
                if (i % 3 == 0) m.erase(i / 2);
            }
            long s = 0;
            for (auto &kv : m) s += (long)kv.second.size();
            auto v = std::make_unique<std::vector<std::shared_ptr<int>>>();
            for (int i = 0; i < 10000; i++) v->push_back(std::make_shared<int>(i));
            sum += s + (long)v->size();
        });
    for (auto &t : ts) t.join();
    long expect = 0;
    {
        std::map<int, std::string> m;
        for (int i = 0; i < 20000; i++) { m[i] = std::string(i % 300, 'x'); if (i % 3 == 0) m.erase(i / 2); }
        for (auto &kv : m) expect += (long)kv.second.size();
    }
    CHECK(sum == 8 * (expect + 10000), "container checksum %ld != %ld", sum.load(), 8 * (expect + 10000));

    // exhaustion: bad_alloc, new-handler, nothrow null
    bool threw = false;
    try { volatile std::size_t n = std::size_t(1) << 62; char *q = new char[n]; q[0] = 1; delete[] q; }
    catch (const std::bad_alloc &) { threw = true; }
    CHECK(threw, "new of 2^62 bytes did not throw std::bad_alloc");
    std::set_new_handler(handler);
    threw = false;
    try { volatile std::size_t n = std::size_t(1) << 62; void *q = ::operator new(n); ::operator delete(q); }
    catch (const std::bad_alloc &) { threw = true; }
    CHECK(threw && handler_calls == 1, "new-handler calls %d, threw %d", handler_calls.load(), threw);
    volatile std::size_t big = std::size_t(1) << 62;
    CHECK(new (std::nothrow) char[big] == nullptr, "nothrow new of 2^62 bytes not null");
    threw = false;
    try { void *q = ::operator new(big, std::align_val_t(64)); ::operator delete(q, std::align_val_t(64)); }
    catch (const std::bad_alloc &) { threw = true; }
    CHECK(threw, "aligned new of 2^62 did not throw");

    std::printf("cxx_test: %s (%d failures)\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}

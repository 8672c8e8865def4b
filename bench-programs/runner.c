/* runner: run one benchmark command and measure it.
 *   runner [-t TIMEOUT_S] [-p PRELOAD_LIB] [-o STDOUT_FILE] -- PROG ARGS...
 * The child gets LD_PRELOAD=PRELOAD_LIB (only the child; the runner itself is
 * never preloaded) and runs in its own process group; after TIMEOUT_S seconds
 * the whole group is killed. On its own stdout the runner prints one line:
 *   status=OK|EXIT<n>|SIG<n>|TIMEOUT wall_s=<s> cpu_s=<user+sys> maxrss_kb=<kb>
 * from clock_gettime(CLOCK_MONOTONIC) and wait4()'s rusage of the child. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t timed_out;
static void on_alarm(int sig) { (void)sig; timed_out = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double timeout = 0;
    const char *preload = NULL, *out = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "+t:p:o:")) != -1) {
        switch (opt) {
        case 't': timeout = atof(optarg); break;
        case 'p': preload = optarg; break;
        case 'o': out = optarg; break;
        default: fprintf(stderr, "usage: runner [-t S] [-p LIB] [-o FILE] -- PROG ARGS...\n"); return 2;
        }
    }
    if (optind >= argc) { fprintf(stderr, "runner: no command\n"); return 2; }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART: wait4 returns EINTR */
    sigaction(SIGALRM, &sa, NULL);

    double t0 = now();
    pid_t pid = fork();
    if (pid < 0) { perror("runner: fork"); return 2; }
    if (pid == 0) {
        setpgid(0, 0);
        if (preload && *preload) setenv("LD_PRELOAD", preload, 1);
        else unsetenv("LD_PRELOAD"); /* the system-malloc baseline must not inherit one */
        if (out) {
            int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0 || dup2(fd, 1) < 0) { perror("runner: open output"); _exit(126); }
            close(fd);
        }
        execvp(argv[optind], &argv[optind]);
        perror("runner: exec");
        _exit(127);
    }
    setpgid(pid, pid);
    if (timeout > 0) {
        struct itimerval it;
        memset(&it, 0, sizeof it);
        it.it_value.tv_sec = (time_t)timeout;
        it.it_value.tv_usec = (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6);
        setitimer(ITIMER_REAL, &it, NULL);
    }
    int st = 0, killed = 0;
    struct rusage ru;
    for (;;) {
        pid_t r = wait4(pid, &st, 0, &ru);
        if (r == pid) break;
        if (r < 0 && errno == EINTR) {
            if (timed_out && !killed) { kill(-pid, SIGKILL); kill(pid, SIGKILL); killed = 1; }
            continue;
        }
        perror("runner: wait4");
        return 2;
    }
    double wall = now() - t0;
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    char status[32];
    if (killed) snprintf(status, sizeof status, "TIMEOUT");
    else if (WIFSIGNALED(st)) snprintf(status, sizeof status, "SIG%d", WTERMSIG(st));
    else if (WEXITSTATUS(st) != 0) snprintf(status, sizeof status, "EXIT%d", WEXITSTATUS(st));
    else snprintf(status, sizeof status, "OK");
    printf("status=%s wall_s=%.4f cpu_s=%.4f maxrss_kb=%ld\n", status, wall, cpu, ru.ru_maxrss);
    return 0;
}

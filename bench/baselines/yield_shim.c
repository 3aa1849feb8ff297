/* Preloaded (LD_PRELOAD) into the argon2 tool by bench/floor.py for its
 * floor row, C Argon2 that gives its CPU away as the API's hashes do: an
 * interval timer's SIGALRM calls sched_yield(2) every YIELD_EVERY_US
 * microseconds, so that whatever else waits for the CPU runs, until
 * YIELD_FOR_US microseconds after the start (wall time; unset: no end).
 * The tool hashes once per process, so the start is the hash's.
 */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static struct timespec until; /* tv_sec 0: yield to the end */

static void give_way(int signum) {
    static const struct itimerval off = {{0, 0}, {0, 0}};
    struct timespec now;
    (void)signum;
    if (until.tv_sec != 0 && clock_gettime(CLOCK_MONOTONIC, &now) == 0 &&
        (now.tv_sec > until.tv_sec ||
         (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))) {
        setitimer(ITIMER_REAL, &off, 0);
        return;
    }
    sched_yield();
}

__attribute__((constructor)) static void start(void) {
    const char *every = getenv("YIELD_EVERY_US");
    const char *bound = getenv("YIELD_FOR_US");
    long us = every ? atol(every) : 0;
    long for_us = bound ? atol(bound) : 0;
    struct sigaction action = {0};
    struct itimerval timer = {{0, us}, {0, us}};
    if (us <= 0 || us >= 1000000) {
        return;
    }
    if (for_us > 0 && clock_gettime(CLOCK_MONOTONIC, &until) == 0) {
        until.tv_sec += for_us / 1000000;
        until.tv_nsec += (for_us % 1000000) * 1000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec += 1;
            until.tv_nsec -= 1000000000;
        }
    }
    action.sa_handler = give_way;
    action.sa_flags = SA_RESTART;
    if (sigaction(SIGALRM, &action, 0) == 0) {
        setitimer(ITIMER_REAL, &timer, 0);
    }
}

/* Preloaded (LD_PRELOAD) into the argon2 tool by bench/floor.py for its
 * floor row, C Argon2 that gives its CPU away as the API's hashes do: an
 * interval timer's SIGALRM calls sched_yield(2) every YIELD_EVERY_US
 * microseconds, so that whatever else waits for the CPU runs.
 */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/time.h>

static void give_way(int signum) {
    (void)signum;
    sched_yield();
}

__attribute__((constructor)) static void start(void) {
    const char *every = getenv("YIELD_EVERY_US");
    long us = every ? atol(every) : 0;
    struct sigaction action = {0};
    struct itimerval timer = {{0, us}, {0, us}};
    if (us <= 0 || us >= 1000000) {
        return;
    }
    action.sa_handler = give_way;
    action.sa_flags = SA_RESTART;
    if (sigaction(SIGALRM, &action, 0) == 0) {
        setitimer(ITIMER_REAL, &timer, 0);
    }
}

/* Preloaded (LD_PRELOAD) into the argon2 tool by bench/floor.py for its
 * floor row, C Argon2 that gives its CPU away as the API's hashes do: an
 * interval timer's SIGALRM sleeps SIGALRM microseconds (libc's usleep called
 * with the signal's number, as api.auth._hash_server installs it) every
 * YIELD_EVERY_US microseconds, with the timer slack lowered to
 * TIMER_SLACK_NS, so that whatever else waits for the CPU runs.
 */
#define _DEFAULT_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <unistd.h>

static void give_way(int signum) {
    usleep((useconds_t)signum);
}

__attribute__((constructor)) static void start(void) {
    const char *every = getenv("YIELD_EVERY_US");
    const char *slack = getenv("TIMER_SLACK_NS");
    long us = every ? atol(every) : 0;
    struct sigaction action = {0};
    struct itimerval timer = {{0, us}, {0, us}};
    if (us <= 0 || us >= 1000000) {
        return;
    }
    if (slack && atol(slack) > 0) {
        prctl(PR_SET_TIMERSLACK, (unsigned long)atol(slack), 0, 0, 0);
    }
    action.sa_handler = give_way;
    action.sa_flags = SA_RESTART;
    if (sigaction(SIGALRM, &action, 0) == 0) {
        setitimer(ITIMER_REAL, &timer, 0);
    }
}

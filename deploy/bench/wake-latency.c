/*
 * The cost of waking a sleeping thread on the other CPU of this machine:
 * two threads, pinned to CPUs 0 and 1, pass a token back and forth through
 * two eventfds, N times, and the round trip (two cross-CPU wake-ups) is
 * timed. Sleeping: each waits in epoll_wait and the CPUs go idle between
 * round trips (a 200 us pause), as a target waiting for its next command
 * does; spinning: each polls its non-blocking eventfd.
 *
 * It bounds what any target that sleeps can do where a round trip of its
 * own (the disk's completion, the host's next command) is in the path of
 * every I/O: see "O_DIRECT" in docs/benchmarks.md. Not a test.
 *
 *   cc -O2 -pthread deploy/bench/wake-latency.c -o /tmp/wake-latency
 *   flock /tmp/pinion-heavy.lock /tmp/wake-latency          # sleeping
 *   flock /tmp/pinion-heavy.lock /tmp/wake-latency spin     # spinning
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

enum { N = 5000 };
static int to_peer, to_main, spin;

static void pin(int cpu)
{
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void await(int fd, int ep)
{
	uint64_t v;
	struct epoll_event e;
	if (spin) {
		while (read(fd, &v, sizeof v) != sizeof v)
			;
		return;
	}
	while (epoll_wait(ep, &e, 1, -1) != 1)
		;
	if (read(fd, &v, sizeof v) != sizeof v)
		abort();
}

static int watch(int fd)
{
	int ep = epoll_create1(0);
	struct epoll_event e = { .events = EPOLLIN };
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e))
		abort();
	return ep;
}

static void *peer(void *arg)
{
	uint64_t one = 1;
	int ep = watch(to_peer);
	(void)arg;
	pin(1);
	for (int i = 0; i < N; i++) {
		await(to_peer, ep);
		if (write(to_main, &one, sizeof one) != sizeof one)
			abort();
	}
	return NULL;
}

static int by_value(const void *a, const void *b)
{
	double d = *(const double *)a - *(const double *)b;
	return (d > 0) - (d < 0);
}

int main(int argc, char **argv)
{
	static double rt[N];
	uint64_t one = 1;
	struct timespec a, b;
	pthread_t t;
	spin = argc > 1;
	to_peer = eventfd(0, spin ? EFD_NONBLOCK : 0);
	to_main = eventfd(0, spin ? EFD_NONBLOCK : 0);
	if (to_peer < 0 || to_main < 0 || pthread_create(&t, NULL, peer, NULL))
		return 1;
	int ep = watch(to_main);
	pin(0);
	usleep(1000);
	for (int i = 0; i < N; i++) {
		clock_gettime(CLOCK_MONOTONIC, &a);
		if (write(to_peer, &one, sizeof one) != sizeof one)
			return 1;
		await(to_main, ep);
		clock_gettime(CLOCK_MONOTONIC, &b);
		rt[i] = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;
		if (!spin)
			usleep(200);
	}
	pthread_join(t, NULL);
	qsort(rt, N, sizeof rt[0], by_value);
	printf("%s: round trip (two cross-CPU wake-ups) p50 %.1f us, p90 %.1f, p99 %.1f\n",
	       spin ? "spinning" : "sleeping in epoll_wait", rt[N / 2], rt[N * 9 / 10], rt[N * 99 / 100]);
	return 0;
}

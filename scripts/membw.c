// Memory read bandwidth: threads each sum their share of a 1 GiB buffer, the
// way a generated token streams the weights. Prints GB/s (best of 5 passes).
//   cc -O2 -march=native -pthread scripts/membw.c -o membw && ./membw 2
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BYTES (1ul << 30)

struct part {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
};

static void *reader(void *arg) {
    struct part *t = arg;
    // Eight independent sums, so the loop is bound by loads, not additions.
    uint64_t s[8] = {0};
    for (size_t i = 0; i + 8 <= t->n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += t->p[i + j];
    for (int j = 0; j < 8; j++) t->sum += s[j];
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "membw: error: threads must be 1..256\n");
        return 2;
    }
    uint64_t *buf = aligned_alloc(1 << 21, BYTES);
    if (!buf) {
        fprintf(stderr, "membw: error: cannot allocate 1 GiB\n");
        return 2;
    }
    memset(buf, 1, BYTES);
    size_t words = BYTES / 8, share = words / threads;
    double best = 0;
    uint64_t check = 0;
    for (int pass = 0; pass < 5; pass++) {
        pthread_t tid[256];
        struct part parts[256];
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int t = 0; t < threads; t++) {
            parts[t] = (struct part){buf + t * share, share, 0};
            pthread_create(&tid[t], NULL, reader, &parts[t]);
        }
        for (int t = 0; t < threads; t++) {
            pthread_join(tid[t], NULL);
            check += parts[t].sum;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
        double gbs = (double)share * threads * 8 / s / 1e9;
        if (gbs > best) best = gbs;
    }
    printf("%.1f\n", best);
    return check == 0;  // never true: keeps the sums from being optimized away
}

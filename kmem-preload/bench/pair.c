/* One thread, malloc(64) + free pairs, thread CPU time per pair (docs/performance.md):
 *   gcc -O2 -o pair kmem-preload/bench/pair.c
 *   for l in target/release/libkmem.so /lib/x86_64-linux-gnu/libc.so.6 ...; do
 *     LD_PRELOAD=$l taskset -c 0 ./pair; done */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(void) {
    struct timespec a, b;
    void *keep[64];
    for (int i = 0; i < 64; i++) keep[i] = malloc(64); /* warm the class */
    const long n = 20000000;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (long i = 0; i < n; i++) {
        void *p = malloc(64);
        __asm__ volatile("" : : "r"(p) : "memory"); /* keep the pair */
        free(p);
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    printf("%.2f ns/pair\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    for (int i = 0; i < 64; i++) free(keep[i]);
    return 0;
}

/* The C contract of libkmem.so, run under LD_PRELOAD by scripts/preload.sh.
 *
 * Every function's contract (alignment rules, EINVAL and ENOMEM cases, overflow, realloc
 * corner cases, malloc(0) uniqueness, usable size >= request, free(NULL), C23 sized frees),
 * foreign pointers (__libc_malloc & co. freed, reallocated and sized through kmem), and
 * allocation at awkward times: a library constructor (early.c) and this program's own
 * constructor, thread exit (pthread_key destructors), a pthread_atfork child handler and the
 * child of a multi-threaded parent, a dlopen'ed library with thread-local storage.
 *
 * It also checks that the memory is kmem's: with LD_PRELOAD the symbol `malloc` must resolve
 * into libkmem.so (dladdr), unless KMEM_EXPECT_OTHER=1 (the same program run without kmem,
 * which must pass too: the contract is glibc's).
 *
 * Prints one line per failed check and a closing "N passed, N failed" line; exits non-zero on
 * any failure. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* The checks below use a block after a realloc that failed on purpose (which leaves it alive):
 * GCC's use-after-free warning cannot tell. */
#pragma GCC diagnostic ignored "-Wuse-after-free"

/* glibc's own allocator, bypassing any interposition: "foreign" memory for kmem. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_memalign(size_t, size_t);
/* C23; glibc 2.36 does not declare them. Resolved at run time (kmem exports them). */
typedef void (*free_sized_fn)(void *, size_t);
typedef void (*free_aligned_sized_fn)(void *, size_t, size_t);

extern char *early_ptr;
extern int early_ok;

static int passed, failed;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (cond) {                                                                        \
            passed++;                                                                      \
        } else {                                                                           \
            failed++;                                                                      \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                         \
            printf(__VA_ARGS__);                                                           \
            printf("\n");                                                                  \
        }                                                                                  \
    } while (0)

static int aligned_to(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* Opaque to the optimiser, so that calls with impossible sizes are really made. */
static size_t volatile_size(size_t n) {
    volatile size_t v = n;
    return v;
}

static char *ctor_ptr;
__attribute__((constructor)) static void main_ctor(void) {
    ctor_ptr = malloc(123);
    if (ctor_ptr) memset(ctor_ptr, 'c', 123);
}

static void test_startup(void) {
    CHECK(early_ok, "a library constructor's allocations misbehaved");
    CHECK(early_ptr && strcmp(early_ptr, "allocated in a library constructor") == 0, "strdup");
    free(early_ptr);
    CHECK(ctor_ptr && ctor_ptr[122] == 'c' && malloc_usable_size(ctor_ptr) >= 123, "ctor");
    free(ctor_ptr);
}

static void test_malloc(void) {
    enum { N = 200 };
    void *zero[N];
    for (int i = 0; i < N; i++) {
        zero[i] = malloc(0);
        CHECK(zero[i] != NULL, "malloc(0) returned NULL");
        for (int j = 0; j < i; j++)
            if (zero[j] == zero[i]) CHECK(0, "malloc(0) returned %p twice", zero[i]);
    }
    for (int i = 0; i < N; i++) free(zero[i]);

    size_t sizes[] = {1, 7, 8, 9, 15, 16, 17, 24, 31, 33, 64, 95, 96, 97, 100, 192, 200, 255,
                      256, 1000, 4095, 4096, 4097, 8192, 8193, 65536, 100000, 1 << 20,
                      (4 << 20) - 1, 4 << 20, (4 << 20) + 1, 9 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        unsigned char *p = malloc(n);
        CHECK(p != NULL, "malloc(%zu)", n);
        if (!p) continue;
        CHECK(aligned_to(p, n <= 8 ? 8 : 16), "malloc(%zu) = %p misaligned", n, (void *)p);
        size_t u = malloc_usable_size(p);
        CHECK(u >= n, "malloc_usable_size(malloc(%zu)) = %zu", n, u);
        memset(p, 0xab, u); /* the whole usable size is writable */
        free(p);
    }
    free(NULL);
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL)");

    errno = 0;
    CHECK(malloc(volatile_size(SIZE_MAX)) == NULL && errno == ENOMEM, "malloc(SIZE_MAX)");
    errno = 0;
    CHECK(malloc(volatile_size((size_t)PTRDIFF_MAX + 1)) == NULL && errno == ENOMEM,
          "malloc(PTRDIFF_MAX + 1)");
}

static void test_calloc(void) {
    for (size_t n = 1; n < 70000; n = n * 3 + 1) {
        unsigned char *p = calloc(n, 3);
        CHECK(p != NULL, "calloc(%zu, 3)", n);
        int zero = 1;
        for (size_t i = 0; i < n * 3; i++) zero &= p[i] == 0;
        CHECK(zero, "calloc(%zu, 3) not zeroed", n);
        memset(p, 0xff, n * 3); /* dirty it: the next calloc of this class must zero again */
        free(p);
    }
    unsigned char *big = calloc(1, 6 << 20);
    CHECK(big && big[0] == 0 && big[(6 << 20) - 1] == 0, "calloc of a mapping");
    free(big);
    void *z = calloc(0, 5);
    CHECK(z != NULL, "calloc(0, 5) is a unique pointer");
    free(z);
    errno = 0;
    CHECK(calloc(volatile_size(SIZE_MAX / 2), 3) == NULL && errno == ENOMEM, "calloc overflow");
    errno = 0;
    CHECK(calloc(volatile_size((size_t)1 << 33), (size_t)1 << 33) == NULL && errno == ENOMEM,
          "calloc overflow 2^66");
}

static void test_realloc(void) {
    /* realloc(NULL, n) is malloc(n). */
    unsigned char *p = realloc(NULL, 10);
    CHECK(p != NULL, "realloc(NULL, 10)");
    for (int i = 0; i < 10; i++) p[i] = (unsigned char)i;
    size_t steps[] = {11, 100, 5000, 5, 100000, 3 << 20, 5 << 20, 12 << 20, 6 << 20, 300, 10};
    size_t kept = 10; /* bytes whose contents every realloc so far preserved */
    for (size_t s = 0; s < sizeof steps / sizeof *steps; s++) {
        unsigned char *q = realloc(p, steps[s]);
        CHECK(q != NULL, "realloc to %zu", steps[s]);
        if (!q) break;
        if (steps[s] < kept) kept = steps[s];
        int same = 1;
        for (size_t i = 0; i < kept; i++) same &= q[i] == (unsigned char)i;
        CHECK(same, "realloc to %zu lost the contents", steps[s]);
        CHECK(malloc_usable_size(q) >= steps[s], "usable after realloc to %zu", steps[s]);
        CHECK(aligned_to(q, steps[s] <= 8 ? 8 : 16), "realloc result misaligned");
        for (size_t i = 0; i < 10 && i < steps[s]; i++) q[i] = (unsigned char)i;
        kept = steps[s] < 10 ? steps[s] : 10;
        p = q;
    }
    /* Failure leaves the block untouched. */
    errno = 0;
    CHECK(realloc(p, volatile_size(SIZE_MAX - 64)) == NULL && errno == ENOMEM, "huge realloc");
    CHECK(p[9] == 9, "the block after a failed realloc");
    /* realloc(p, 0) frees p and returns NULL (glibc), errno untouched. */
    errno = 1234;
    CHECK(realloc(p, 0) == NULL && errno == 1234, "realloc(p, 0)");
    /* realloc(NULL, 0) is malloc(0): a unique pointer. */
    void *z = realloc(NULL, 0);
    CHECK(z != NULL, "realloc(NULL, 0)");
    free(z);

    unsigned char *a = reallocarray(NULL, 10, 10);
    CHECK(a != NULL && malloc_usable_size(a) >= 100, "reallocarray(NULL, 10, 10)");
    a[99] = 7;
    errno = 0;
    CHECK(reallocarray(a, volatile_size(SIZE_MAX / 4), 8) == NULL && errno == ENOMEM,
          "reallocarray overflow");
    CHECK(a[99] == 7, "the block after a failed reallocarray");
    a = reallocarray(a, 1000, 10);
    CHECK(a && a[99] == 7, "reallocarray grow");
    free(a);
}

/* Large blocks: a request more than the machine can ever back fails now with ENOMEM (the
 * kernel's overcommit policy judges it, as it does glibc's mmap), unless the policy is "always
 * overcommit" (vm.overcommit_memory = 1); a successful realloc that has to move a mapping
 * leaves errno alone. */
static void test_large(void) {
    int policy = -1;
    FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");
    if (f) {
        if (fscanf(f, "%d", &policy) != 1) policy = -1;
        fclose(f);
    }
    size_t tib = (size_t)1 << 40;
    if (policy == 0 || policy == 2) {
        errno = 0;
        void *m = malloc(volatile_size(tib));
        CHECK(m == NULL && errno == ENOMEM, "malloc(1 TiB)");
        free(m);
        errno = 0;
        void *c = calloc(volatile_size(tib), 1);
        CHECK(c == NULL && errno == ENOMEM, "calloc(1 TiB)");
        free(c);
        void *out = (void *)0x1234;
        int rc = posix_memalign(&out, 4096, volatile_size(tib));
        CHECK(rc == ENOMEM && out == (void *)0x1234, "posix_memalign(1 TiB)");
        if (rc == 0) free(out);
        unsigned char *p = malloc(8 << 20);
        CHECK(p != NULL, "malloc(8 MiB)");
        if (p) {
            p[0] = 7;
            errno = 0;
            unsigned char *r = realloc(p, volatile_size(tib));
            CHECK(r == NULL && errno == ENOMEM, "realloc to 1 TiB");
            if (r) {
                p = r;
            } else {
                CHECK(p[0] == 7, "the block after a refused realloc to 1 TiB");
            }
            free(p);
        }
    } else {
        printf("contract_test: overcommit policy %d: the 1 TiB requests are not checked\n", policy);
    }
    /* A 6 MiB block whose next page is taken cannot grow in place: realloc moves it. */
    size_t six = (size_t)6 << 20, ten = (size_t)10 << 20;
    unsigned char *q = malloc(six);
    CHECK(q != NULL, "malloc(6 MiB)");
    if (!q) return;
    for (size_t i = 0; i < six; i += 4096) q[i] = (unsigned char)(i >> 12);
    void *block = mmap(q + six, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                       -1, 0);
    int blocked = block == (void *)(q + six);
    errno = 1234;
    unsigned char *r = realloc(q, ten);
    CHECK(r != NULL && errno == 1234, "realloc 6 -> 10 MiB: %p, errno %d (blocked: %d)", (void *)r,
          errno, blocked);
    if (r) {
        int same = 1;
        for (size_t i = 0; i < six; i += 4096) same &= r[i] == (unsigned char)(i >> 12);
        CHECK(same, "realloc 6 -> 10 MiB lost the contents");
        CHECK(!blocked || r != q, "realloc 6 -> 10 MiB grew into a taken page");
        free(r);
    }
    if (block != MAP_FAILED) munmap(block, 4096);
}

static void test_aligned(void) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    /* posix_memalign: EINVAL unless a power of two multiple of sizeof(void *). */
    size_t bad[] = {0, 1, 2, 4, 3, 12, 24, 48, 100, 4097};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        void *out = (void *)0x1234;
        errno = 0;
        int rc = posix_memalign(&out, bad[i], 16);
        CHECK(rc == EINVAL && out == (void *)0x1234 && errno == 0,
              "posix_memalign(align %zu) = %d", bad[i], rc);
    }
    for (size_t al = sizeof(void *); al <= ((size_t)16 << 20); al <<= 1) {
        size_t sizes[] = {0, 1, al - 1 ? al - 1 : 1, al, al + 1, 3 * al};
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
            if (sizes[s] > ((size_t)40 << 20)) continue;
            void *out = NULL;
            int rc = posix_memalign(&out, al, sizes[s]);
            CHECK(rc == 0 && out && aligned_to(out, al), "posix_memalign(%zu, %zu)", al,
                  sizes[s]);
            if (out) {
                CHECK(malloc_usable_size(out) >= sizes[s], "usable of posix_memalign");
                memset(out, 1, sizes[s]);
            }
            free(out);
        }
    }
    void *out = (void *)0x1234;
    errno = 0;
    CHECK(posix_memalign(&out, 64, volatile_size(SIZE_MAX - 4096)) == ENOMEM &&
              out == (void *)0x1234 && errno == 0,
          "posix_memalign ENOMEM leaves *out and errno alone");

    /* aligned_alloc: the alignment must be a power of two (EINVAL otherwise, as C17 and
     * glibc >= 2.38); any size. */
    size_t nonpow2[] = {0, 3, 24, 100, 6000};
    for (size_t i = 0; i < sizeof nonpow2 / sizeof *nonpow2; i++) {
        errno = 0;
        void *p = aligned_alloc(nonpow2[i], 64);
        if (getenv("KMEM_EXPECT_OTHER") && p) { /* glibc < 2.38 rounds up, as memalign */
            free(p);
            passed++;
            continue;
        }
        CHECK(p == NULL && errno == EINVAL, "aligned_alloc(%zu, 64)", nonpow2[i]);
    }
    for (size_t al = 1; al <= ((size_t)8 << 20); al <<= 1) {
        void *p = aligned_alloc(al, 100);
        CHECK(p && aligned_to(p, al) && malloc_usable_size(p) >= 100, "aligned_alloc(%zu, 100)",
              al);
        free(p);
    }
    errno = 0;
    CHECK(aligned_alloc(64, volatile_size(SIZE_MAX - 100)) == NULL && errno == ENOMEM,
          "aligned_alloc ENOMEM");

    /* memalign: small alignments are malloc's (16), others rounded up to a power of two,
     * above SIZE_MAX / 2 + 1 EINVAL. */
    size_t mal[] = {0, 1, 2, 3, 8, 16, 24, 33, 100, 4096, 5000, 1 << 20};
    for (size_t i = 0; i < sizeof mal / sizeof *mal; i++) {
        size_t want = 16;
        while (want < mal[i]) want <<= 1;
        void *p = memalign(mal[i], 40);
        CHECK(p && aligned_to(p, want), "memalign(%zu, 40) = %p", mal[i], p);
        free(p);
    }
    errno = 0;
    CHECK(memalign(volatile_size(SIZE_MAX / 2 + 2), 16) == NULL && errno == EINVAL,
          "memalign with an impossible alignment");

    void *v = valloc(100);
    CHECK(v && aligned_to(v, page) && malloc_usable_size(v) >= 100, "valloc");
    free(v);
    void *pv = pvalloc(100);
    CHECK(pv && aligned_to(pv, page) && malloc_usable_size(pv) >= page, "pvalloc(100)");
    free(pv);
    errno = 0;
    CHECK(pvalloc(volatile_size(SIZE_MAX - 10)) == NULL && errno == ENOMEM, "pvalloc overflow");
}

static void test_sized_free(void) {
    free_sized_fn fs = (free_sized_fn)dlsym(RTLD_DEFAULT, "free_sized");
    free_aligned_sized_fn fas = (free_aligned_sized_fn)dlsym(RTLD_DEFAULT, "free_aligned_sized");
    if (getenv("KMEM_EXPECT_OTHER") && (!fs || !fas)) { /* glibc 2.36 has neither */
        printf("note: free_sized/free_aligned_sized not provided by this libc: skipped\n");
        return;
    }
    CHECK(fs && fas, "free_sized and free_aligned_sized are exported");
    if (!fs || !fas) return;
    size_t sizes[] = {1, 24, 100, 5000, 100000, 5 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        void *p = malloc(sizes[i]);
        fs(p, sizes[i]);
        void *q = calloc(1, sizes[i]);
        fs(q, sizes[i]);
        void *a = aligned_alloc(256, sizes[i]);
        fas(a, 256, sizes[i]);
        passed++;
    }
    fs(NULL, 10);
    fas(NULL, 64, 10);
}

static void test_foreign(void) {
    /* Memory from glibc's own allocator, whatever malloc is: kmem must route it. */
    for (int i = 0; i < 50; i++) {
        char *p = __libc_malloc(100 + i);
        CHECK(p != NULL, "__libc_malloc");
        memset(p, 'x', 100 + i);
        CHECK(malloc_usable_size(p) >= (size_t)(100 + i), "usable size of a foreign pointer");
        free(p);
    }
    char *c = __libc_calloc(10, 10);
    free(c);
    char *m = __libc_memalign(64, 1000);
    free_sized_fn fs = (free_sized_fn)dlsym(RTLD_DEFAULT, "free_sized");
    if (fs) fs(m, 1000); else free(m);
    char *r = __libc_malloc(50);
    strcpy(r, "foreign contents");
    r = realloc(r, 100000);
    CHECK(r && strcmp(r, "foreign contents") == 0, "realloc of a foreign pointer");
    free(r);
    /* The dynamic loader's memory: a dlerror() string is malloc'ed by libc/ld.so. */
    CHECK(dlopen("/nonexistent/libnothing.so", RTLD_NOW) == NULL, "dlopen of nothing");
    CHECK(dlerror() != NULL, "dlerror");
}

/* Thread exit: pthread_key destructors run after the thread function returned. */
static pthread_key_t key;
static int destructor_ok;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void key_destructor(void *v) {
    char *p = malloc(200);
    char *q = realloc(v, 4000);
    int ok = p && q && q[0] == 'k';
    free(p);
    free(q);
    pthread_mutex_lock(&mu);
    destructor_ok += ok;
    pthread_mutex_unlock(&mu);
}

static int (*plugin_touch)(int);
static void *worker(void *arg) {
    long id = (long)arg;
    char *v = malloc(10);
    v[0] = 'k';
    pthread_setspecific(key, v);
    /* Cross-thread traffic: allocate a batch, free half here, hand the rest to main. */
    void **keep = malloc(1000 * sizeof *keep);
    for (int i = 0; i < 1000; i++) keep[i] = malloc((size_t)(i * 37 + id) % 3000 + 1);
    for (int i = 0; i < 1000; i += 2) free(keep[i]);
    if (plugin_touch) plugin_touch((int)id);
    return keep;
}

static void test_threads(void) {
    pthread_key_create(&key, key_destructor);
    void *h = dlopen(PLUGIN_PATH, RTLD_NOW);
    CHECK(h != NULL, "dlopen(%s): %s", PLUGIN_PATH, dlerror());
    if (h) plugin_touch = (int (*)(int))dlsym(h, "plugin_touch");
    enum { T = 8 };
    pthread_t t[T];
    for (long i = 0; i < T; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (int i = 0; i < T; i++) {
        void **keep;
        pthread_join(t[i], (void **)&keep);
        for (int j = 1; j < 1000; j += 2) free(keep[j]); /* freed by another thread */
        free(keep);
    }
    CHECK(destructor_ok == T, "%d of %d pthread_key destructors allocated", destructor_ok, T);
    if (h) {
        CHECK(plugin_touch(300) == 300 % 256 - (300 % 256 > 127 ? 256 : 0), "plugin");
        CHECK(dlclose(h) == 0, "dlclose");
    }
}

/* fork: an atfork child handler that allocates, and a child of a parent whose other threads
 * are allocating while it forks. */
static int atfork_child_ok;
static void atfork_child(void) {
    char *p = malloc(100);
    char *q = malloc(50000);
    atfork_child_ok = p && q;
    free(p);
    free(q);
}
static volatile int stop;
static void *churn(void *arg) {
    (void)arg;
    while (!stop) {
        void *p[64];
        for (int i = 0; i < 64; i++) p[i] = malloc((size_t)(i * 97) % 9000 + 1);
        for (int i = 0; i < 64; i++) free(p[i]);
    }
    return NULL;
}

static void test_fork(void) {
    pthread_atfork(NULL, NULL, atfork_child);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, churn, NULL);
    for (int round = 0; round < 20; round++) {
        pid_t pid = fork();
        if (pid == 0) {
            int ok = atfork_child_ok;
            for (int i = 0; i < 2000; i++) {
                void *p = malloc((size_t)(i * 131) % 20000 + 1);
                if (!p) ok = 0;
                free(p);
            }
            _exit(ok ? 0 : 3);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fork round %d: child status %d", round, st);
    }
    stop = 1;
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
}

static void test_is_kmem(void) {
    Dl_info info;
    void *sym = dlsym(RTLD_DEFAULT, "malloc");
    int found = sym && dladdr(sym, &info) && info.dli_fname;
    const char *name = found ? info.dli_fname : "?";
    if (getenv("KMEM_EXPECT_OTHER")) {
        printf("malloc is %s (run without kmem)\n", name);
    } else {
        CHECK(found && strstr(name, "libkmem") != NULL, "malloc resolves into %s", name);
    }
}

int main(void) {
    test_is_kmem();
    test_startup();
    test_malloc();
    test_calloc();
    test_realloc();
    test_large();
    test_aligned();
    test_sized_free();
    test_foreign();
    test_threads();
    test_fork();
    printf("contract_test: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}

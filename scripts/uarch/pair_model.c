/*
 * A model of Kmalloc's inline alloc+free pair (the rseq mode, a sheaf pop and push) in C and
 * inline assembly, to try layouts of the fast path's data on this machine without rebuilding
 * kmem: the same instructions as the disassembly of kmem-bench's `fastpath` loop (the class
 * lookup, the view, the rseq area's `rseq_cs` store and `cpu_id` load, the slot, the `top`,
 * the free's tag and object-start checks, the per-slot counters), against a fake rseq area in
 * TLS that no kernel restarts (one thread, no preemption handling: a timing model only).
 *
 *   gcc -O2 -o /tmp/pm scripts/uarch/pair_model.c            # main: a published table pointer
 *   gcc -O2 -DVIEWS=static_views -o /tmp/pm_static ...       # views at a link-time address
 *   gcc -O2 -DVIEWS=region -o /tmp/pm_region ...             # slot base from one global
 *   ... -DVIEWS=region_class (+ class * 8, tcmalloc's layout)  -DVIEWS=region_span (+ class *
 *   a span loaded from a global: every class's slots in one mapping)
 *   ... -DCOUNTERS_BY_TOP (the counters beside the top, as main keeps them since 7a6cf94)
 *   ... -DSTATS=0 (no per-slot counters)  -DRSEQCS=0 (no arming store)  -DCHECK=0 (no free
 *   check)  -DDF=0 (no double-free compare)
 *   taskset -c 1 /tmp/pm                                     # prints ns per pair, 5 runs
 *
 * Alternate the builds and compare their lowest runs: the host's noise only ever adds time.
 * Figures: docs/performance.md, "Static view tables" (2026-12-07).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The layouts (-DVIEWS=...). Names that are not C keywords: an unknown identifier in `#if` is
 * 0, so `-DVIEWS=static` would silently be the first layout. */
#define table 1
#define static_views 2
#define region 3
#define region_class 4
#define region_span 5
#ifndef VIEWS
#define VIEWS table
#endif
#if VIEWS < table || VIEWS > region_span
#error "VIEWS: table, static_views, region, region_class or region_span"
#endif
#ifndef STATS
#define STATS 1
#endif
#ifndef RSEQCS
#define RSEQCS 1
#endif
#ifndef CHECK
#define CHECK 1
#endif
#ifndef DF
#define DF 1
#endif

/* The fake rseq area (cpu_id_start, cpu_id, rseq_cs) and kmem's `SEQ_OFFSET`. */
__thread uint64_t rseq_area[4];
uint64_t SEQ_OFFSET;
/* `PcsView`: the sheaf slots' base, nr, mask, full; the object-start check; slab mask; tag. */
struct view {
  uint64_t base, nr, mask, full, mul, lim;
  uint32_t smask;
  uint16_t tag, pad;
  uint64_t pad2;
};
struct view views[32] __attribute__((aligned(64)));
struct view *POP_VIEWS, *PUSH_VIEWS; /* the published table pointers (main's layout) */
char *REGION;                        /* the slot base of the region layouts */
uint64_t SPAN;                       /* region_span: the distance between classes' slots */
uint16_t *TAG_ROOT[1 << 13];
uint8_t class_tab[256];
char slotmem[0x1c0 * 4] __attribute__((aligned(64))); /* KmemCacheCpu slots, 448 B apart */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
__attribute__((noinline)) void fail(void) { abort(); }

static inline __attribute__((always_inline)) struct view *view_of(struct view *tab,
                                                                  uint64_t idx) {
#if VIEWS == table
  if (!tab) fail();
  return tab + idx;
#else
  (void)tab;
  return views + idx;
#endif
}

/* The sequence's start, shared by the pop and the push: arm the area, the CPU id, the bound,
 * the slot's address, its top. */
#if RSEQCS
#define ARM "lea 0(%%rip), %[t]\n\t" "mov %[t], %%fs:8(%[off])\n\t"
#else
#define ARM ""
#endif
#if VIEWS >= region
#define SLOT_ADD "add %[sb], %[slot]\n\t"
#define SB_OPERAND , [sb] "r"(sb)
#else
#define SLOT_ADD "add (%[v]), %[slot]\n\t"
#define SB_OPERAND
#endif
#define SLOT_TOP                                                                                  \
  ARM "mov %%fs:4(%[off]), %k[slot]\n\t"                                                         \
      "cmp 8(%[v]), %[slot]\n\t"                                                                 \
      "jae 9f\n\t"                                                                               \
      "imul $0x1c0, %[slot], %[slot]\n\t" SLOT_ADD "mov (%[slot]), %[top]\n\t"
/* Where the slot's base comes from (the region layouts). */
#if VIEWS == region
#define SLOT_BASE char *sb = REGION
#elif VIEWS == region_class
#define SLOT_BASE char *sb = REGION + idx * 8 /* tcmalloc: every class's top in one block */
#elif VIEWS == region_span
#define SLOT_BASE char *sb = REGION + idx * SPAN /* every class's slots in one mapping */
#else
#define SLOT_BASE (void)0
#endif
/* The counters: entries 25 and 26 of the slot's array, as measured on 2026-12-07 before
 * `7a6cf94`; main now keeps them beside the top (-DCOUNTERS_BY_TOP). */
#ifdef COUNTERS_BY_TOP
#define CTR_ALLOC 8
#define CTR_FREE 16
#else
#define CTR_ALLOC 0x138
#define CTR_FREE 0x140
#endif

static inline __attribute__((always_inline)) void *kalloc(uint64_t size) {
  uint64_t idx = class_tab[(size + 7) >> 3];
  struct view *v = view_of(POP_VIEWS, idx);
  uint64_t off = SEQ_OFFSET;
  char *slot;
  uint64_t top, obj, t;
  SLOT_BASE;
  __asm__ volatile(
      SLOT_TOP
      "mov %[top], %[t]\n\t"
      "and 16(%[v]), %[t]\n\t"
      "cmp $0x18, %[t]\n\t"
      "jbe 9f\n\t"
      "mov (%[top]), %[obj]\n\t"
      "sub $8, %[top]\n\t"
      "mov %[top], (%[slot])\n\t"
      "jmp 8f\n\t"
      "9: xor %k[obj], %k[obj]\n\t"
      "8:\n\t"
      : [slot] "=&r"(slot), [top] "=&r"(top), [obj] "=&r"(obj), [t] "=&r"(t)
      : [off] "r"(off), [v] "r"(v)
        SB_OPERAND
      : "memory", "cc");
  if (!obj) fail();
#if STATS
  ((volatile uint64_t *)(slot + CTR_ALLOC))[0]++;
#endif
  return (void *)obj;
}

static inline __attribute__((always_inline)) void kfree(void *p, uint64_t size) {
  uint64_t idx = class_tab[(size + 7) >> 3];
  struct view *v = view_of(PUSH_VIEWS, idx);
  uint64_t ptr = (uint64_t)p;
#if CHECK
  uint16_t tag = 0;
  if ((ptr >> 48) == 0) {
    uint16_t *l = TAG_ROOT[ptr >> 35];
    if (l) tag = l[(ptr >> 12) & 0x7fffff];
  }
  if (tag != v->tag) fail();
  uint64_t o = (uint32_t)ptr & v->smask;
  if (o * v->mul > v->lim) fail();
#endif
  uint64_t off = SEQ_OFFSET;
  char *slot;
  uint64_t top, t;
  SLOT_BASE;
  __asm__ volatile(
      SLOT_TOP
      "test %[top], %[top]\n\t"
      "jz 9f\n\t"
      "mov %[top], %[t]\n\t"
      "and 16(%[v]), %[t]\n\t"
      "cmp $0x18, %[t]\n\t"
      "je 4f\n\t"
#if DF
      "cmp (%[top]), %[obj]\n\t"
      "je 9f\n\t"
#endif
      "4: cmp 24(%[v]), %[t]\n\t"
      "jae 9f\n\t"
      "mov %[obj], 8(%[top])\n\t"
      "add $8, %[top]\n\t"
      "mov %[top], (%[slot])\n\t"
      "jmp 8f\n\t"
      "9: xor %k[slot], %k[slot]\n\t"
      "8:\n\t"
      : [slot] "=&r"(slot), [top] "=&r"(top), [t] "=&r"(t)
      : [off] "r"(off), [v] "r"(v), [obj] "r"(ptr)
        SB_OPERAND
      : "memory", "cc");
  if (!slot) fail();
#if STATS
  ((volatile uint64_t *)(slot + CTR_FREE))[0]++;
#endif
}

int main(void) {
  const long n = 30000000;
  uint64_t *sheaf = aligned_alloc(4096, 4096); /* a sheaf: 4 KiB, aligned to its size */
  char *objs = aligned_alloc(1 << 22, 1 << 22); /* a slab */
  uint16_t *leaf = calloc(1 << 23, 2);
  uint64_t o0 = (uint64_t)objs;
  TAG_ROOT[o0 >> 35] = leaf;
  leaf[(o0 >> 12) & 0x7fffff] = 5;
  for (int i = 0; i < 100; i++) sheaf[4 + i] = o0 + 64 * i;
  *(uint64_t *)slotmem = (uint64_t)&sheaf[3 + 50];
  SEQ_OFFSET = (uint64_t)((char *)&rseq_area[0] - (char *)__builtin_thread_pointer());
  for (int i = 0; i < 32; i++) {
    views[i] = (struct view){.base = (uint64_t)slotmem, .nr = 1, .mask = 4095, .full = 4096 - 8,
                             .mul = 1, .lim = 1 << 22, .smask = 4095, .tag = 5};
  }
  POP_VIEWS = views;
  PUSH_VIEWS = views;
  REGION = slotmem;
  SPAN = 0;
  for (int i = 0; i < 256; i++) class_tab[i] = i % 32;
#if VIEWS == region_class
  /* The top of class 64 B's column (the slot is REGION + class * 8 on CPU 0). */
  *(uint64_t *)(slotmem + class_tab[(64 + 7) >> 3] * 8) = *(uint64_t *)slotmem;
#endif
  volatile uint64_t size = 64; /* a size the compiler cannot fold, as kmem-bench's */
  for (int r = 0; r < 5; r++) {
    double t0 = now();
    for (long i = 0; i < n; i++) {
      uint64_t s = size;
      void *p = kalloc(s);
      __asm__ volatile("" ::"r"(p));
      kfree(p, s);
    }
    printf("VIEWS=%d STATS=%d RSEQCS=%d CHECK=%d DF=%d: %.3f ns/pair\n", VIEWS, STATS, RSEQCS,
           CHECK, DF, (now() - t0) / n * 1e9);
  }
  return 0;
}

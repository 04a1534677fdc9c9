/* Misuse that kmem must catch and abort on, with a message (scripts/preload.sh checks both):
 *   interior: free of a pointer inside a kmalloc object;
 *   block:    double free of a page block (50 000 bytes);
 *   slab:     double free of a small object (caught at its CPU slab's freelist head);
 * and, run with KMEM_DEBUG=FZPU (slub_debug), corruption only the debug checks see:
 *   overflow: a write one byte past the 112-byte kmalloc object (its right red zone);
 *   underflow: a write one byte before it (its left red zone);
 *   uaf:      a write after free, seen when the object is handed out again;
 *   deep:     a double free of an object that is not its freelist's head. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "";
    char *volatile p = malloc(100);
    if (strcmp(what, "interior") == 0) {
        free(p + 16);
    } else if (strcmp(what, "block") == 0) {
        char *volatile q = malloc(50000);
        free(q);
        free(q);
    } else if (strcmp(what, "slab") == 0) {
        free(p);
        free(p);
    } else if (strcmp(what, "overflow") == 0) {
        ((volatile char *)p)[112] = 'x'; /* volatile: not a dead store before free */
        free(p);
    } else if (strcmp(what, "underflow") == 0) {
        ((volatile char *)p)[-1] = 'x';
        free(p);
    } else if (strcmp(what, "uaf") == 0) {
        free(p);
        ((volatile char *)p)[3] = 'x';
        char *volatile q = malloc(100);
        printf("reused: %d\n", q == p);
    } else if (strcmp(what, "deep") == 0) {
        char *volatile q = malloc(100);
        free(p);
        free(q);
        free(p);
    }
    printf("not caught: %s\n", what);
    return 0;
}

/* Misuse that kmem must catch and abort on, with a message (scripts/preload.sh checks both):
 *   interior: free of a pointer inside a kmalloc object;
 *   block:    double free of a page block (50 000 bytes);
 *   slab:     double free of a small object (caught at its CPU slab's freelist head). */
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
    }
    printf("not caught: %s\n", what);
    return 0;
}

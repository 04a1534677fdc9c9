/* A library linked into contract_test: its constructor allocates before main (and before the
 * test program's own constructors), and leaves a pointer for main to check and free. */
#include <stdlib.h>
#include <string.h>

char *early_ptr;
int early_ok;

__attribute__((constructor)) static void early_ctor(void) {
    char *a = malloc(40);
    char *b = calloc(3, 100);
    char *c = strdup("allocated in a library constructor");
    early_ok = a && b && c && b[299] == 0;
    free(a);
    b = realloc(b, 5000);
    early_ok = early_ok && b && b[0] == 0;
    free(b);
    early_ptr = c;
}

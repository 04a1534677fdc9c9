/* dlopen'ed by contract_test: its thread-local block is allocated by the dynamic loader with
 * malloc (kmem) in each thread that touches it, and freed by the loader. */
#include <stdlib.h>
static __thread char tls_buf[3000];
int plugin_touch(int v) {
    tls_buf[v % 3000] = (char)v;
    char *p = malloc(64);
    p[0] = tls_buf[v % 3000];
    int r = p[0];
    free(p);
    return r;
}

/* Test driver: runs a model file given as a path through the engine on a grey image, printing
 * the status of sqz_init and, if it accepted the file, the top-1 index. Built with sanitizers by
 * tests/test_engine.py to show that no file, however damaged, makes the engine read or write
 * outside the file and the arena. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqz.h"

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 2;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *file = aligned_alloc(16, (size_t)(n + 15) / 16 * 16);
    if (!file || fread(file, 1, (size_t)n, f) != (size_t)n) return 2;
    fclose(f);
    size_t need = sqz_arena_bytes(file);
    if (need > (64u << 20)) need = 64u << 20; /* a hostile header asks for anything: init refuses it */
    uint8_t *arena = aligned_alloc(16, need ? (need + 15) / 16 * 16 : 16);
    sqz_model m;
    int status = sqz_init(&m, file, (size_t)n, arena, need);
    printf("%d", status);
    if (status == SQZ_OK) {
        memset(sqz_input(&m), 128, sqz_input_bytes(&m));
        sqz_run(&m);
        printf(" %d", sqz_top1(&m));
    }
    printf("\n");
    free(arena);
    free(file);
    return 0;
}

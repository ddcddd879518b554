/* The example program of `squeezenet export --format c`: classifies binary PPM (P6) images at the
 * model's input size, one line per image: the file, the top-1 class and its probability.
 *
 *   make && ./sqz-classify cat.ppm dog.ppm
 *   ./sqz-classify --logits a.ppm      also every logit
 *   ./sqz-classify --ram a.ppm         also the arena's high-water mark after the runs
 *
 * Make a PPM with e.g. `convert photo.jpg -resize 128x128^ -gravity center -extent 128x128 x.ppm`
 * (ImageMagick) or PIL's Image.save("x.ppm"). On a microcontroller, use sqz.h's four calls as
 * below with the camera's pixels written to sqz_input(). */
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "sqz.h"

static _Alignas(16) uint8_t arena[SQZ_MODEL_ARENA_BYTES];

static int skip_space(FILE *f) { /* whitespace and comments of a PPM header */
    int c;
    while ((c = fgetc(f)) != EOF) {
        if (c == '#') {
            while ((c = fgetc(f)) != EOF && c != '\n') {}
        } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            ungetc(c, f);
            return 1;
        }
    }
    return 0;
}

/* The pixels of a P6 file of exactly size x size, maxval 255, into rgb; NULL, or why not. */
static const char *read_ppm(const char *path, uint8_t *rgb, int size) {
    FILE *f = fopen(path, "rb");
    if (!f) return "cannot open it";
    int w = 0, h = 0, maxval = 0;
    const char *why = 0;
    if (fgetc(f) != 'P' || fgetc(f) != '6') why = "not a binary PPM (P6) file";
    else if (!skip_space(f) || fscanf(f, "%d", &w) != 1 || !skip_space(f) || fscanf(f, "%d", &h) != 1 ||
             !skip_space(f) || fscanf(f, "%d", &maxval) != 1 || maxval != 255)
        why = "a damaged PPM header, or not 8 bits per channel";
    else if (w != size || h != size)
        why = "not at the model's input size (resize and crop it to SQZ_MODEL_IMAGE_SIZE square)";
    else if (fgetc(f) == EOF || fread(rgb, 3, (size_t)size * size, f) != (size_t)size * size)
        why = "truncated";
    fclose(f);
    return why;
}

int main(int argc, char **argv) {
    int logits = 0, ram = 0, images = 0, failed = 0;
    memset(arena, SQZ_CANARY, sizeof arena);
    sqz_model m;
    int status = sqz_init(&m, sqz_model_file, sqz_model_file_bytes, arena, sizeof arena);
    if (status != SQZ_OK) {
        fprintf(stderr, "error: %s\n", sqz_status_text(status));
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--logits")) { logits = 1; continue; }
        if (!strcmp(argv[i], "--ram")) { ram = 1; continue; }
        images++;
        const char *why = read_ppm(argv[i], sqz_input(&m), SQZ_MODEL_IMAGE_SIZE);
        if (why) {
            fprintf(stderr, "error: %s: %s\n", argv[i], why);
            failed = 1;
            continue;
        }
        const float *p = sqz_run(&m);
        int top = sqz_top1(&m);
        printf("%s\t%s\t%.4f", argv[i], sqz_class_name(&m, top), p[top]);
        for (int c = 0; logits && c < SQZ_MODEL_CLASSES; c++) printf("\t%.9g", sqz_logits(&m)[c]);
        printf("\n");
    }
    if (!images) {
        fprintf(stderr, "usage: %s [--logits] [--ram] IMAGE.ppm...  (P6, %dx%d)\n", argv[0], SQZ_MODEL_IMAGE_SIZE,
                SQZ_MODEL_IMAGE_SIZE);
        return 2;
    }
    if (ram) printf("ram\t%zu\t%u\n", sqz_arena_high_water(&m), (unsigned)SQZ_MODEL_ARENA_BYTES);
    return failed;
}

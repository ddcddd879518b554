/* sqz: a SqueezeNet inference engine in C11, for microcontrollers, embedded Linux and the browser
 * (wasm32). One file format (written by `squeezenet export --format c|web` and `squeezenet
 * compress`) describes the whole model: its layers, a buffer plan computed at export, the
 * preprocessing, the class names and the weights in fp32, int8 or Deep Compression's codebook
 * form. No allocation: the caller gives the model file and one arena of sqz_arena_bytes().
 *
 *   sqz_model m;
 *   if (sqz_init(&m, model_file, model_bytes, arena, arena_bytes) != SQZ_OK) ...
 *   memcpy(sqz_input(&m), rgb, sqz_input_bytes(&m));   // image_size x image_size x 3, RGB
 *   const float *p = sqz_run(&m);                     // num_classes probabilities
 *
 * The file and the arena must be 16-byte aligned; the file is read in place (it can live in
 * flash), and is little-endian as every wasm32, x86 and ARM Cortex target is. */
#ifndef SQZ_H
#define SQZ_H

#include <stddef.h>
#include <stdint.h>

#define SQZ_MAGIC 0x315A5153u /* "SQZ1" */
#define SQZ_VERSION 1u
#define SQZ_BLOCK 8           /* output channels per block of packed weights */
#define SQZ_MAX_STEM 7        /* largest stem kernel */

enum sqz_precision { SQZ_F32 = 0, SQZ_I8 = 1 }; /* the activations' type */
enum sqz_op { SQZ_STEM = 1, SQZ_CONV = 2, SQZ_POOL = 3, SQZ_HEAD = 4 };
enum sqz_form { SQZ_W_F32 = 0, SQZ_W_I8 = 1, SQZ_W_CODEBOOK = 2, SQZ_W_I8F = 3 }; /* I8F: int8 weights, fp32 math */
enum sqz_flag { SQZ_RELU = 1, SQZ_ACCUM = 2, SQZ_POOLED = 4 };
enum sqz_status {
    SQZ_OK = 0, SQZ_E_MAGIC = -1, SQZ_E_VERSION = -2, SQZ_E_TRUNCATED = -3, SQZ_E_LAYER = -4,
    SQZ_E_ARENA = -5, SQZ_E_ALIGN = -6, SQZ_E_DECODE = -7
};

typedef struct {
    uint32_t magic, version, file_bytes, n_layers;
    uint32_t image_size;   /* the input: image_size x image_size x 3 bytes, RGB */
    uint32_t in_channels;  /* 3: RGB; 1: the model sees grey (PIL's integer luma) */
    uint32_t num_classes;
    uint32_t precision;    /* enum sqz_precision */
    uint32_t arena_bytes;  /* the plan: every activation, the input image, scratch, outputs */
    uint32_t input_off;    /* arena offset of the input image */
    uint32_t logits_off;   /* arena offset of num_classes logits, then num_classes probabilities */
    uint32_t zeros_off;    /* arena offset of a row of zeros (padding of the 3x3 convs) */
    uint32_t scratch_off;  /* arena offset of one block of codebook weights, decoded per call */
    uint32_t decode_bytes; /* dense fp32 size of the codebook weights (sqz_decode's cache) */
    uint32_t names_off;    /* file offset of the class names, each NUL-terminated */
    uint32_t meta_off, meta_bytes; /* file offset and size of the checkpoint's metadata (JSON) */
    uint32_t resize_size;  /* how the image was made: shorter side to this, centre crop */
    uint32_t zeros_bytes, scratch_bytes;
    float pixel_scale[3], pixel_shift[3]; /* model input = pixel * scale + shift, per channel */
    uint32_t reserved[6];
} sqz_header; /* 128 bytes */

typedef struct {
    uint32_t op, flags;
    uint32_t k, stride, pad;
    uint32_t h, w, cin;          /* input */
    uint32_t oh, ow, cout;       /* output: this layer's channels */
    uint32_t in_off, out_off;    /* arena offsets */
    uint32_t out_channels, out_first; /* the destination tensor's channels, and this layer's first */
    uint32_t form;               /* enum sqz_form */
    uint32_t weights_off;        /* file offsets (16-byte aligned) of the packed weights, */
    uint32_t bias_off;           /* the bias (fp32, one per padded output channel), */
    uint32_t mult_off;           /* int8: acc -> real multiplier; codebook: per-channel scale */
    uint32_t codebook_off, bits, codes_off, blocks_off, decoded_off; /* codebook form */
    float in_scale;  int32_t in_zero;  /* int8 activations: real = scale * (q - zero) */
    float out_scale; int32_t out_zero;
    float res_scale; int32_t res_zero; /* SQZ_ACCUM: the destination's values before this layer */
    uint32_t ring_off;           /* SQZ_STEM | SQZ_POOLED: arena offset of 3 rows of the stem */
    uint32_t pool_oh, pool_ow;   /* SQZ_STEM | SQZ_POOLED: the pooled output */
    uint32_t name_off;           /* file offset of the PyTorch module's name */
    uint32_t reserved[6];
} sqz_layer; /* 160 bytes */

typedef struct {
    const uint8_t *file;
    const sqz_header *header;
    const sqz_layer *layers;
    uint8_t *arena;
    float *decoded;        /* sqz_decode's cache: decoded weights, Winograd's, its scratch; or NULL */
    const uint32_t *wino;  /* in the cache: each layer's Winograd weights (offset in floats, 0: none) */
    float *wino_v, *wino_m; /* in the cache: the transformed input, and one block's products */
} sqz_model;

int sqz_init(sqz_model *m, const void *file, size_t file_bytes, void *arena, size_t arena_bytes);
size_t sqz_arena_bytes(const void *file); /* 0 if `file` is not a model file */
uint8_t *sqz_input(const sqz_model *m);
size_t sqz_input_bytes(const sqz_model *m);
const float *sqz_run(sqz_model *m);        /* the probabilities (softmax), num_classes of them */
const float *sqz_logits(const sqz_model *m);
int sqz_top1(const sqz_model *m);
const char *sqz_class_name(const sqz_model *m, int index);
/* fp32 models: trade RAM for speed with a cache of sqz_decode_bytes(m) bytes (16-byte aligned):
 * codebook or int8 weights decoded once (without it each block is decoded when used), and, in
 * builds with SQZ_WINOGRAD (the default for wasm), the 3x3 convolutions by Winograd's F(2x2, 3x3),
 * 2.25x fewer multiplies. */
size_t sqz_decode_bytes(const sqz_model *m);
int sqz_decode(sqz_model *m, void *cache, size_t bytes);
/* The highest arena byte the last runs wrote, when the arena was filled with SQZ_CANARY first. */
#define SQZ_CANARY 0xA5
size_t sqz_arena_high_water(const sqz_model *m);
const char *sqz_status_text(int status);
size_t sqz_model_size(void); /* sizeof(sqz_model), for callers that allocate it elsewhere (wasm) */

#endif

/*
 * Build-time stand-in for miniaudio.h, used only to compile Ollama's vendored llama.cpp
 * (llama/llama.cpp/tools/mtmd/mtmd-helper.cpp) from the Go module zip.
 *
 * Why: Go module zips leave out nested vendor/ directories, so the zip of github.com/ollama/ollama
 * lacks llama/llama.cpp/vendor/miniaudio/miniaudio.h, and Debian packages no miniaudio. The helper
 * uses miniaudio only to decode audio attachments for audio-capable multimodal models. This header
 * declares that small surface and makes every decode fail cleanly, so such a request is refused as
 * "not an audio file" instead of the build failing. Text models (all this project runs on loopback)
 * are unaffected.
 */
#ifndef OLLAMA_FLEET_MINIAUDIO_SHIM_H
#define OLLAMA_FLEET_MINIAUDIO_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifndef MA_API
#define MA_API
#endif

typedef int ma_result;
typedef uint32_t ma_uint32;
typedef uint64_t ma_uint64;

#define MA_SUCCESS 0
#define MA_NOT_IMPLEMENTED (-29)

typedef enum { ma_format_unknown = 0, ma_format_u8, ma_format_s16, ma_format_s24, ma_format_s32, ma_format_f32 } ma_format;

typedef struct {
    ma_format format;
    ma_uint32 channels;
    ma_uint32 sampleRate;
} ma_decoder_config;

typedef struct {
    ma_decoder_config config;
} ma_decoder;

MA_API ma_decoder_config ma_decoder_config_init(ma_format format, ma_uint32 channels, ma_uint32 sampleRate) {
    ma_decoder_config c;
    c.format = format;
    c.channels = channels;
    c.sampleRate = sampleRate;
    return c;
}

MA_API ma_result ma_decoder_init_memory(const void *data, size_t size, const ma_decoder_config *config, ma_decoder *decoder) {
    (void)data; (void)size; (void)config; (void)decoder;
    return MA_NOT_IMPLEMENTED;
}

MA_API ma_result ma_decoder_get_length_in_pcm_frames(ma_decoder *decoder, ma_uint64 *length) {
    (void)decoder;
    if (length) *length = 0;
    return MA_NOT_IMPLEMENTED;
}

MA_API ma_result ma_decoder_read_pcm_frames(ma_decoder *decoder, void *frames, ma_uint64 count, ma_uint64 *read) {
    (void)decoder; (void)frames; (void)count;
    if (read) *read = 0;
    return MA_NOT_IMPLEMENTED;
}

MA_API ma_result ma_decoder_uninit(ma_decoder *decoder) {
    (void)decoder;
    return MA_SUCCESS;
}

#endif

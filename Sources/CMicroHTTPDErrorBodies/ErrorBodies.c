#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <stdatomic.h>
#include <microhttpd.h>
#include "CMicroHTTPDErrorBodies.h"

/* Appends one byte of JSON string content, escaping what JSON requires; stops quietly when full. */
static void put(char *out, size_t capacity, size_t *used, const char *bytes, size_t count) {
    if (*used + count + 1 > capacity) return;
    memcpy(out + *used, bytes, count);
    *used += count;
}

size_t fk_mhd_error_json(const char *html, size_t length, char *out, size_t capacity) {
    size_t used = 0;
    if (capacity == 0) return 0;
    put(out, capacity, &used, "{\"error\":\"", 10);
    int inTag = 0, afterTitle = 0, pendingSpace = 0;
    for (size_t i = 0; i < length; i++) {
        char c = html[i];
        if (c == '<') {
            inTag = 1;
            if (i + 8 <= length && strncmp(html + i, "</title>", 8) == 0) afterTitle = 1;
            continue;
        }
        if (c == '>') {
            inTag = 0;
            if (afterTitle == 1) { put(out, capacity, &used, ": ", 2); afterTitle = 2; pendingSpace = 0; }
            continue;
        }
        if (inTag) continue;
        if (c == '&') {
            /* The fixed messages use &quot; only; any entity becomes a single quote so the text stays readable. */
            const char *semicolon = memchr(html + i, ';', length - i);
            if (semicolon != NULL && semicolon - (html + i) <= 6) { i = (size_t)(semicolon - html); c = '\''; }
        }
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') { pendingSpace = used > 10; continue; }
        if (pendingSpace) { put(out, capacity, &used, " ", 1); pendingSpace = 0; }
        if (c == '"' || c == '\\') { char escaped[2] = {'\\', c}; put(out, capacity, &used, escaped, 2); }
        else if ((unsigned char)c < 0x20) { put(out, capacity, &used, " ", 1); }
        else { put(out, capacity, &used, &c, 1); }
    }
    /* Room for the closing quote and brace is kept by stopping the text early if needed. */
    if (used + 3 > capacity) used = capacity - 3;
    memcpy(out + used, "\"}", 2);
    used += 2;
    out[used] = '\0';
    return used;
}

typedef struct MHD_Response *(*CreateFromBuffer)(size_t, void *, enum MHD_ResponseMemoryMode);

struct MHD_Response *MHD_create_response_from_buffer(size_t size, void *buffer, enum MHD_ResponseMemoryMode mode) {
    static _Atomic(CreateFromBuffer) real;
    CreateFromBuffer create = atomic_load(&real);
    if (create == NULL) {
        create = (CreateFromBuffer)dlsym(RTLD_NEXT, "MHD_create_response_from_buffer");
        if (create == NULL) return NULL;
        atomic_store(&real, create);
    }
    if (mode == MHD_RESPMEM_PERSISTENT && buffer != NULL && size >= 6 && memcmp(buffer, "<html>", 6) == 0) {
        char json[512];
        size_t length = fk_mhd_error_json(buffer, size, json, sizeof json);
        struct MHD_Response *response = create(length, json, MHD_RESPMEM_MUST_COPY);
        if (response != NULL) {
            MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        }
        return response;
    }
    return create(size, buffer, mode);
}

#pragma once
#include <stddef.h>

/* libmicrohttpd answers requests it cannot parse (a malformed request line or header, a bad Content-Length, headers
   larger than the connection's memory) itself, before any handler runs, with fixed HTML bodies and no way to set
   them. Fleetkeep's protocol promises JSON errors, so this target interposes MHD_create_response_from_buffer: the
   library's own calls go through its PLT, and a PERSISTENT buffer that starts with "<html>" is one of those fixed
   messages. It is answered instead with {"error": "<the message as text>"} and Content-Type application/json.

   Returns how many bytes of JSON were written to `out` (always NUL-terminated, at most `capacity - 1` bytes). */
size_t fk_mhd_error_json(const char *html, size_t length, char *out, size_t capacity);

#pragma once
#include <curl/curl.h>

/* curl_easy_setopt / curl_easy_getinfo are variadic; these typed wrappers make each argument kind callable from Swift. */
static inline CURLcode fk_curl_setopt_long(CURL *handle, CURLoption option, long value)
{ return curl_easy_setopt(handle, option, value); }

static inline CURLcode fk_curl_setopt_pointer(CURL *handle, CURLoption option, const void *value)
{ return curl_easy_setopt(handle, option, value); }

static inline CURLcode fk_curl_setopt_off(CURL *handle, CURLoption option, curl_off_t value)
{ return curl_easy_setopt(handle, option, value); }

static inline CURLcode fk_curl_setopt_write_callback(CURL *handle, CURLoption option, curl_write_callback callback)
{ return curl_easy_setopt(handle, option, callback); }

static inline CURLcode fk_curl_getinfo_long(CURL *handle, CURLINFO info, long *value)
{ return curl_easy_getinfo(handle, info, value); }

static inline CURLcode fk_curl_global_init_all(void)
{ return curl_global_init(CURL_GLOBAL_ALL); }

static inline CURLcode fk_curl_setopt_read_callback(CURL *handle, CURLoption option, curl_read_callback callback)
{ return curl_easy_setopt(handle, option, callback); }

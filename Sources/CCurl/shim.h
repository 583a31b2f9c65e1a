#pragma once
#include <curl/curl.h>

/* libcurl is not linked in: HTTPClient's CurlLibrary opens it with dlopen when the first transfer needs it (see
   there for why). curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot call; these wrappers call
   the function CurlLibrary found with dlsym through its true variadic type, with one typed argument each. */
typedef CURLcode (*fk_curl_setopt_function)(CURL *handle, CURLoption option, ...);
typedef CURLcode (*fk_curl_getinfo_function)(CURL *handle, CURLINFO info, ...);

static inline CURLcode fk_curl_setopt_long(void *setopt, CURL *handle, CURLoption option, long value)
{ return ((fk_curl_setopt_function)setopt)(handle, option, value); }

static inline CURLcode fk_curl_setopt_pointer(void *setopt, CURL *handle, CURLoption option, const void *value)
{ return ((fk_curl_setopt_function)setopt)(handle, option, value); }

static inline CURLcode fk_curl_setopt_off(void *setopt, CURL *handle, CURLoption option, curl_off_t value)
{ return ((fk_curl_setopt_function)setopt)(handle, option, value); }

static inline CURLcode fk_curl_setopt_write_callback(void *setopt, CURL *handle, CURLoption option, curl_write_callback callback)
{ return ((fk_curl_setopt_function)setopt)(handle, option, callback); }

static inline CURLcode fk_curl_setopt_read_callback(void *setopt, CURL *handle, CURLoption option, curl_read_callback callback)
{ return ((fk_curl_setopt_function)setopt)(handle, option, callback); }

static inline CURLcode fk_curl_getinfo_long(void *getinfo, CURL *handle, CURLINFO info, long *value)
{ return ((fk_curl_getinfo_function)getinfo)(handle, info, value); }

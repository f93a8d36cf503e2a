// libcurl for Swift: curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot
// call, so each argument type gets a small typed wrapper.
#include <curl/curl.h>

typedef size_t (*pylon_curl_data_callback)(char *data, size_t size, size_t count, void *context);

static inline CURLcode pylon_curl_set_long(CURL *curl, CURLoption option, long value) {
    return curl_easy_setopt(curl, option, value);
}

static inline CURLcode pylon_curl_set_string(CURL *curl, CURLoption option, const char *value) {
    return curl_easy_setopt(curl, option, value);
}

static inline CURLcode pylon_curl_set_pointer(CURL *curl, CURLoption option, void *value) {
    return curl_easy_setopt(curl, option, value);
}

static inline CURLcode pylon_curl_set_slist(CURL *curl, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(curl, option, value);
}

static inline CURLcode pylon_curl_set_callback(CURL *curl, CURLoption option, pylon_curl_data_callback value) {
    return curl_easy_setopt(curl, option, value);
}

static inline CURLcode pylon_curl_set_blob(CURL *curl, CURLoption option, void *data, size_t length) {
    struct curl_blob blob = { data, length, CURL_BLOB_COPY };
    return curl_easy_setopt(curl, option, &blob);
}

static inline CURLcode pylon_curl_response_code(CURL *curl, long *code) {
    return curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, code);
}

typedef int (*pylon_curl_progress_callback)(void *context, curl_off_t download_total, curl_off_t downloaded, curl_off_t upload_total, curl_off_t uploaded);

static inline CURLcode pylon_curl_set_progress(CURL *curl, pylon_curl_progress_callback value) {
    return curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, value);
}

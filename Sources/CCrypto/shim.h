#pragma once
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/bio.h>

// Macro-only or macro-valued constants, as functions Swift can see.
static inline int fk_evp_pkey_ed25519(void) { return EVP_PKEY_ED25519; }
static inline int fk_evp_pkey_x25519(void) { return EVP_PKEY_X25519; }
static inline int fk_evp_pkey_hkdf(void) { return EVP_PKEY_HKDF; }
static inline int fk_gcm_set_ivlen(void) { return EVP_CTRL_GCM_SET_IVLEN; }
static inline int fk_gcm_get_tag(void) { return EVP_CTRL_GCM_GET_TAG; }
static inline int fk_gcm_set_tag(void) { return EVP_CTRL_GCM_SET_TAG; }

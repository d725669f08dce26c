//! TLS to the database (`DATABASE_URL`'s `ssl-mode`, `ssl-ca`) and the broker
//! (`amqps://`, `AMQP_CA_FILE`) runs on rustls, with no OpenSSL.
//!
//! rustls reaches this workspace with two crypto back ends (ring, through sqlx;
//! aws-lc-rs, through the model's HTTP client), and then picks neither on its
//! own: a process chooses one before its first TLS connection.

/// Makes ring the process's TLS crypto; call once, first thing in `main`.
pub fn use_ring_crypto() {
    // Err only if a provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

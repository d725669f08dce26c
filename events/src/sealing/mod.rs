//! Crypto-shredding: personal text sealed in the log under keys kept outside it.
//!
//! A text field of an event is stored sealed: AES-256-GCM under a data key,
//! with a fresh nonce per field and the event's id and the field's name as
//! associated data, so a ciphertext cannot be moved to another event or field
//! unnoticed. Data keys live in the `data_keys` table, never in the log, each
//! wrapped by the key-encryption key (`DATA_KEY_ENCRYPTION_KEY`). Destroying a
//! data key makes every copy of what it sealed unreadable: in the log, in
//! replicas, in backups and in exports, which show `"[erased]"` instead.
//!
//! Keys belong to a [`Scope`]: a user (`user:<id>`: their messages, the
//! replies to them, their bots' names and personas), destroyed with the
//! account; and a conversation's memory (`memory:<user>:<bot>`), which
//! `chat/memory/forget` destroys alone, so that what was remembered before is
//! gone, and new memory gets a new key. Which fields of which events are
//! personal is [`personal`]'s to say: the store seals every append with it, and
//! every reader opens with it.
//!
//! A sealed field is a string `sealed:v1:<key id>:<event id>:<base64 nonce and
//! ciphertext>`. Read models keep the sealed text as the events have it (a
//! rebuild or `verify` needs no key); the readers that show or use the text
//! open it here. Unwrapped keys are cached in memory, bounded, so the hot path
//! makes no extra query.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use lru::LruCache;
use rand::RngCore;
use sqlx::mysql::MySqlPool;
use uuid::Uuid;

use crate::event::{BotId, UserId};

mod kek;
mod personal;
pub use kek::Kek;
pub use personal::{SealedField, SealedText};

/// What an erased text reads as.
pub const ERASED: &str = "[erased]";
const PREFIX: &str = "sealed:v1:";
/// Unwrapped keys kept in memory.
const CACHED_KEYS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The ciphertext does not authenticate: it was changed, or moved from
    /// another event or field.
    #[error("event {event_id}, field {field}: the sealed text does not authenticate (it was changed or moved); refusing to show it")]
    Tampered { event_id: String, field: String },
    #[error("event {event_id}, field {field}: the sealed text is malformed")]
    Malformed { event_id: String, field: String },
    #[error("the data key {0} cannot be unwrapped: is DATA_KEY_ENCRYPTION_KEY the key it was wrapped with?")]
    Unwrap(String),
    /// The scope's user was erased: nothing more is sealed for them (a key
    /// made now would outlive the erasure).
    #[error("user {0} was erased: nothing more is recorded for them")]
    Erased(UserId),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Whose a data key is: what destroying it erases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A user's texts; destroyed only with the account, so this process may
    /// keep using the key it knows (a text sealed under a key destroyed
    /// meanwhile is erased with the rest, as it should be).
    User(UserId),
    /// A conversation's memory; `forget` destroys it and the next memory gets
    /// a new key, so its current key is looked up each time.
    Memory(UserId, BotId),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::User(user) => write!(f, "user:{user}"),
            Scope::Memory(user, bot) => write!(f, "memory:{user}:{bot}"),
        }
    }
}

/// A conversation's memory: the scope `forget` destroys.
pub fn memory_scope(user: UserId, bot: BotId) -> String {
    Scope::Memory(user, bot).to_string()
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Keys rewrapped under the current key-encryption key.
    pub rewrapped: u64,
    /// Keys already under it.
    pub current: u64,
}

/// A data key's id, and the key.
type DataKey = (String, Arc<Aes256Gcm>);

/// Data keys: made, unwrapped (cached), destroyed.
#[derive(Clone)]
pub struct Keyring {
    pool: MySqlPool,
    kek: Kek,
    /// Unwrapped keys, by id.
    cache: Arc<Mutex<LruCache<String, Arc<Aes256Gcm>>>>,
    /// Each user's key to seal with, so that sealing a message makes no query.
    sealing: Arc<Mutex<LruCache<UserId, DataKey>>>,
}

/// A text as a reader gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Text(String),
    /// Its key was destroyed.
    Erased,
}

impl Opened {
    pub fn into_text(self) -> String {
        match self {
            Opened::Text(text) => text,
            Opened::Erased => ERASED.to_string(),
        }
    }
}

pub fn is_sealed(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// Whether `text` is one sealed for event `event_id`, as the store seals
/// them: a plain text that merely starts like one (anyone may write
/// `sealed:v1:` in a message) names no event, or another.
pub fn is_sealed_for(text: &str, event_id: Uuid) -> bool {
    matches!(Sealed::parse(text, "", Some(event_id)), Ok(Some(_)))
}

impl Keyring {
    pub fn new(pool: MySqlPool, kek: Kek) -> Self {
        Self {
            pool,
            kek,
            cache: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHED_KEYS).unwrap_or(NonZeroUsize::MIN),
            ))),
            sealing: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHED_KEYS).unwrap_or(NonZeroUsize::MIN),
            ))),
        }
    }

    /// Seals `text` as field `field` of event `event_id`, under the scope's
    /// current key (made if it has none).
    pub async fn seal(
        &self,
        scope: Scope,
        (event_id, field): (Uuid, &str),
        text: &str,
    ) -> Result<String, SealError> {
        let key = self.sealing_key(scope).await?;
        Self::seal_under(&key, (event_id, field), text)
    }

    /// Seals `text` as field `field` of event `event_id` under `key`.
    fn seal_under(
        (key_id, key): &DataKey,
        (event_id, field): (Uuid, &str),
        text: &str,
    ) -> Result<String, SealError> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = associated(&event_id.to_string(), field);
        let sealed = key
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: text.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Malformed {
                event_id: event_id.to_string(),
                field: field.to_string(),
            })?;
        let mut body = nonce.to_vec();
        body.extend_from_slice(&sealed);
        Ok(format!(
            "{PREFIX}{key_id}:{event_id}:{}",
            BASE64.encode(body)
        ))
    }

    /// Opens a field: its text, `Erased` when its key is gone, an error naming
    /// the event and field when it does not authenticate. `of_event` is the
    /// event read it from the log (the text must have been sealed for it);
    /// `None` for a read model's copy. A plain text (sealed by nobody) is
    /// returned as it is.
    pub async fn open(
        &self,
        text: &str,
        field: &str,
        of_event: Option<Uuid>,
    ) -> Result<Opened, SealError> {
        let Some(sealed) = Sealed::parse(text, field, of_event)? else {
            return Ok(Opened::Text(text.to_string()));
        };
        match self.key(sealed.key_id).await? {
            Some(key) => sealed.open_with(&key, field).map(Opened::Text),
            None => Ok(Opened::Erased),
        }
    }

    /// Opens many texts, looking each key up once: a conversation's texts
    /// mostly share one.
    pub(crate) async fn open_all(
        &self,
        texts: Vec<(&mut String, &'static str)>,
    ) -> Result<(), SealError> {
        let mut last: Option<(String, Option<Arc<Aes256Gcm>>)> = None;
        for (text, field) in texts {
            let Some(sealed) = Sealed::parse(text, field, None)? else {
                continue;
            };
            let key = match &last {
                Some((id, key)) if id == sealed.key_id => key.clone(),
                _ => {
                    let key = self.key(sealed.key_id).await?;
                    last = Some((sealed.key_id.to_string(), key.clone()));
                    key
                }
            };
            let opened = match key {
                Some(key) => sealed.open_with(&key, field)?,
                None => ERASED.to_string(),
            };
            *text = opened;
        }
        Ok(())
    }

    /// Destroys every key of `scope`: what they sealed is unreadable for good.
    pub async fn destroy(&self, scope: &str) -> Result<u64, SealError> {
        self.destroy_where("scope = ?", scope).await
    }

    /// Destroys every key of every scope that starts with `prefix` (all of a
    /// user's conversations' memories: `memory:<user>:`).
    pub async fn destroy_all_under(&self, prefix: &str) -> Result<u64, SealError> {
        let pattern = format!("{}%", prefix.replace('%', "\\%").replace('_', "\\_"));
        self.destroy_where("scope LIKE ?", &pattern).await
    }

    /// Deletes the keys whose scope matches `condition` (one placeholder, bound
    /// to `value`), and forgets them here.
    async fn destroy_where(&self, condition: &str, value: &str) -> Result<u64, SealError> {
        let keys: Vec<String> =
            sqlx::query_scalar(&format!("SELECT key_id FROM data_keys WHERE {condition}"))
                .bind(value)
                .fetch_all(&self.pool)
                .await?;
        let deleted = sqlx::query(&format!("DELETE FROM data_keys WHERE {condition}"))
            .bind(value)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if let Ok(mut cache) = self.cache.lock() {
            for key in &keys {
                cache.pop(key);
            }
        }
        if let Ok(mut sealing) = self.sealing.lock() {
            let destroyed: Vec<UserId> = sealing
                .iter()
                .filter(|(_, (key_id, _))| keys.contains(key_id))
                .map(|(user, _)| *user)
                .collect();
            for user in destroyed {
                sealing.pop(&user);
            }
        }
        Ok(deleted)
    }

    /// Destroys every key of `user`, theirs and their conversations' memories',
    /// and leaves a tombstone in their scope, so that no key is ever made for
    /// them again: a reply or a memory written as the account goes is refused
    /// rather than sealed under a key that would outlive the erasure.
    pub async fn erase_user(&self, user: UserId) -> Result<u64, SealError> {
        let scope = Scope::User(user).to_string();
        let destroyed = self.destroy(&scope).await?
            + self.destroy_all_under(&format!("memory:{user}:")).await?;
        sqlx::query(
            "INSERT IGNORE INTO data_keys (key_id, scope, wrapped, created_at) \
             VALUES (?, ?, '', NOW(6))",
        )
        .bind(format!("erased-{user}"))
        .bind(&scope)
        .execute(&self.pool)
        .await?;
        Ok(destroyed)
    }

    /// Refuses to seal for an erased user (see [`Keyring::erase_user`]).
    async fn refuse_if_erased(&self, user: UserId) -> Result<(), SealError> {
        let erased: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM data_keys WHERE scope = ? AND wrapped = '' LIMIT 1")
                .bind(Scope::User(user).to_string())
                .fetch_optional(&self.pool)
                .await?;
        match erased {
            Some(_) => Err(SealError::Erased(user)),
            None => Ok(()),
        }
    }

    /// The key to seal `scope`'s texts with: a user's from memory once known,
    /// a memory's looked up each time (see [`Scope`]). None for an erased user.
    pub(super) async fn sealing_key(&self, scope: Scope) -> Result<DataKey, SealError> {
        let user = match scope {
            Scope::Memory(user, _) => {
                self.refuse_if_erased(user).await?;
                return self.current_key(&scope.to_string()).await;
            }
            Scope::User(user) => user,
        };
        if let Some(known) = self
            .sealing
            .lock()
            .ok()
            .and_then(|mut s| s.get(&user).cloned())
        {
            return Ok(known);
        }
        self.refuse_if_erased(user).await?;
        let current = self.current_key(&scope.to_string()).await?;
        if let Ok(mut sealing) = self.sealing.lock() {
            sealing.put(user, current.clone());
        }
        Ok(current)
    }

    /// The scope's newest key, made (and stored, wrapped) if it has none.
    async fn current_key(&self, scope: &str) -> Result<DataKey, SealError> {
        let existing: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, wrapped FROM data_keys WHERE scope = ? AND wrapped <> '' \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(scope)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((key_id, wrapped)) = existing {
            if let Some(key) = self.cached(&key_id) {
                return Ok((key_id, key));
            }
            let key = self.unwrap_key(&key_id, &wrapped)?;
            return Ok((key_id, key));
        }
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let key_id = Uuid::now_v7().simple().to_string();
        let wrapped = self.wrap(&key_id, &raw)?;
        sqlx::query(
            "INSERT INTO data_keys (key_id, scope, wrapped, created_at) VALUES (?, ?, ?, NOW(6))",
        )
        .bind(&key_id)
        .bind(scope)
        .bind(&wrapped)
        .execute(&self.pool)
        .await?;
        let key = Arc::new(cipher(&raw));
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(key_id.clone(), key.clone());
        }
        Ok((key_id, key))
    }

    /// A key by id; `None` when it was destroyed.
    async fn key(&self, key_id: &str) -> Result<Option<Arc<Aes256Gcm>>, SealError> {
        if let Some(key) = self.cached(key_id) {
            return Ok(Some(key));
        }
        let wrapped: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE key_id = ?")
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?;
        wrapped
            .map(|wrapped| self.unwrap_key(key_id, &wrapped))
            .transpose()
    }

    fn cached(&self, key_id: &str) -> Option<Arc<Aes256Gcm>> {
        self.cache.lock().ok()?.get(key_id).cloned()
    }

    /// A data key wrapped with the current key-encryption key: a fresh nonce,
    /// then the sealed key, bound to its id.
    fn wrap(&self, key_id: &str, raw: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut wrapped = nonce.to_vec();
        wrapped.extend(
            self.kek
                .current
                .encrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: raw,
                        aad: key_id.as_bytes(),
                    },
                )
                .map_err(|_| SealError::Unwrap(key_id.to_string()))?,
        );
        Ok(wrapped)
    }

    /// A data key's raw bytes, and whether the current key-encryption key
    /// wrapped it (rather than the previous one).
    fn unwrap_raw(&self, key_id: &str, wrapped: &[u8]) -> Result<(Vec<u8>, bool), SealError> {
        if wrapped.len() < 12 {
            return Err(SealError::Unwrap(key_id.to_string()));
        }
        let open = |kek: &Aes256Gcm| {
            kek.decrypt(
                &nonce_of(&wrapped[..12]),
                Payload {
                    msg: &wrapped[12..],
                    aad: key_id.as_bytes(),
                },
            )
            .ok()
        };
        if let Some(raw) = open(&self.kek.current) {
            return Ok((raw, true));
        }
        self.kek
            .previous
            .as_deref()
            .and_then(open)
            .map(|raw| (raw, false))
            .ok_or_else(|| SealError::Unwrap(key_id.to_string()))
    }

    /// Checks that the key-encryption key opens the newest data key (if there
    /// is one): a tool run without the api's `DATA_KEY_ENCRYPTION_KEY` would
    /// otherwise seal under keys the api cannot open.
    pub async fn check_kek(&self) -> Result<(), SealError> {
        let newest: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, wrapped FROM data_keys WHERE wrapped <> '' \
             ORDER BY created_at DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        match newest {
            Some((key_id, wrapped)) => self.unwrap_raw(&key_id, &wrapped).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Rewraps every data key under the current key-encryption key (those
    /// under the previous one), a batch at a time, telling `progress` after
    /// each. Safe to run again, or to interrupt: a key is either under the old
    /// key or the new, and both open while the rotation runs.
    pub async fn rotate(&self, mut progress: impl FnMut(Rotation)) -> Result<Rotation, SealError> {
        let mut done = Rotation::default();
        let mut after = String::new();
        loop {
            let batch: Vec<(String, Vec<u8>)> = sqlx::query_as(
                "SELECT key_id, wrapped FROM data_keys WHERE key_id > ? AND wrapped <> '' \
                 ORDER BY key_id LIMIT 500",
            )
            .bind(&after)
            .fetch_all(&self.pool)
            .await?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            after.clone_from(last);
            for (key_id, wrapped) in batch {
                let (raw, current) = self.unwrap_raw(&key_id, &wrapped)?;
                if current {
                    done.current += 1;
                    continue;
                }
                sqlx::query("UPDATE data_keys SET wrapped = ? WHERE key_id = ? AND wrapped = ?")
                    .bind(self.wrap(&key_id, &raw)?)
                    .bind(&key_id)
                    .bind(&wrapped)
                    .execute(&self.pool)
                    .await?;
                done.rewrapped += 1;
            }
            progress(done);
        }
        Ok(done)
    }

    fn unwrap_key(&self, key_id: &str, wrapped: &[u8]) -> Result<Arc<Aes256Gcm>, SealError> {
        let (raw, _) = self.unwrap_raw(key_id, wrapped)?;
        if raw.len() != 32 {
            return Err(SealError::Unwrap(key_id.to_string()));
        }
        let key = Arc::new(cipher(&raw));
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(key_id.to_string(), key.clone());
        }
        Ok(key)
    }
}

/// A sealed text, taken apart: which key sealed it, for which event, and the
/// nonce and ciphertext.
struct Sealed<'t> {
    key_id: &'t str,
    event_id: &'t str,
    body: Vec<u8>,
}

impl<'t> Sealed<'t> {
    /// `None` for a plain text; an error for a malformed one, or one sealed
    /// for another event than `of_event`.
    fn parse(
        text: &'t str,
        field: &str,
        of_event: Option<Uuid>,
    ) -> Result<Option<Self>, SealError> {
        let Some(rest) = text.strip_prefix(PREFIX) else {
            return Ok(None);
        };
        let malformed = || SealError::Malformed {
            event_id: of_event.map(|e| e.to_string()).unwrap_or_default(),
            field: field.to_string(),
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(key_id), Some(event_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        if of_event.is_some_and(|e| e.to_string() != event_id) {
            return Err(SealError::Tampered {
                event_id: event_id.to_string(),
                field: field.to_string(),
            });
        }
        let body = BASE64.decode(body).map_err(|_| malformed())?;
        if body.len() < 12 {
            return Err(malformed());
        }
        Ok(Some(Self {
            key_id,
            event_id,
            body,
        }))
    }

    fn open_with(mut self, key: &Aes256Gcm, field: &str) -> Result<String, SealError> {
        let tampered = || SealError::Tampered {
            event_id: self.event_id.to_string(),
            field: field.to_string(),
        };
        let nonce = nonce_of(&self.body[..12]);
        let aad = associated(self.event_id, field);
        let mut text = self.body.split_off(12);
        key.decrypt_in_place(&nonce, aad.as_bytes(), &mut text)
            .map_err(|_| tampered())?;
        String::from_utf8(text).map_err(|_| tampered())
    }
}

/// An AES-256-GCM cipher of a 32-byte key (the callers check the length; any
/// other length gets a key of zeros, which opens nothing sealed here).
fn cipher(key: &[u8]) -> Aes256Gcm {
    Aes256Gcm::new_from_slice(key).unwrap_or_else(|_| Aes256Gcm::new(&[0u8; 32].into()))
}

/// The 12-byte nonce at the head of a sealed body (the callers check its length).
fn nonce_of(bytes: &[u8]) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&bytes[..12.min(bytes.len())]);
    Nonce::from(nonce)
}

fn associated(event_id: &str, field: &str) -> String {
    format!("{event_id}:{field}")
}

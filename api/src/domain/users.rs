//! Users: plain rows (never events, so password hashes stay out of the immutable log),
//! validated the way the original's Django serializer did.

use std::collections::BTreeMap;

use sqlx::MySqlPool;

use events::event::UserId;

pub const MAX_USERNAME_CHARS: usize = 150;
pub const MAX_PASSWORD_CHARS: usize = 128;
pub const MAX_EMAIL_CHARS: usize = 254;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    /// Raised by every password change (see the migration that added it).
    pub credentials_version: u32,
}

/// Field errors keyed by field name, as DRF reports them.
pub type FieldErrors = BTreeMap<&'static str, Vec<String>>;

/// Django's username rule: letters, digits and `@ . + - _`.
pub fn check_username(value: Option<&str>, required: bool, errors: &mut FieldErrors) {
    match value.map(str::trim) {
        None if required => add(errors, "username", "This field is required."),
        None => {}
        Some(name) if super::is_blank(name) => add(errors, "username", "This field may not be blank."),
        Some(name) if name.chars().count() > MAX_USERNAME_CHARS => add(
            errors,
            "username",
            &format!("Ensure this field has no more than {MAX_USERNAME_CHARS} characters."),
        ),
        Some(name)
            if !name
                .chars()
                .all(|c| c.is_alphanumeric() || "@.+-_".contains(c)) =>
        {
            add(
                errors,
                "username",
                "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.",
            )
        }
        Some(_) => {}
    }
}

pub fn check_password(value: Option<&str>, required: bool, errors: &mut FieldErrors) {
    match value {
        None if required => add(errors, "password", "This field is required."),
        None => {}
        Some(p) if super::is_blank(p) => add(errors, "password", "This field may not be blank."),
        Some(p) if p.chars().count() > MAX_PASSWORD_CHARS => add(
            errors,
            "password",
            &format!("Ensure this field has no more than {MAX_PASSWORD_CHARS} characters."),
        ),
        Some(_) => {}
    }
}

/// Optional; `""` means "no email".
pub fn check_email(value: Option<&str>, errors: &mut FieldErrors) {
    let Some(email) = value.map(str::trim).filter(|e| !e.is_empty()) else {
        return;
    };
    let valid = email.chars().count() <= MAX_EMAIL_CHARS
        && !email.contains(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if !valid {
        add(errors, "email", "Enter a valid email address.");
    }
}

fn add(errors: &mut FieldErrors, field: &'static str, message: &str) {
    errors.entry(field).or_default().push(message.to_string());
}

pub const USERNAME_TAKEN: &str = "A user with that username already exists.";
pub const EMAIL_TAKEN: &str = "A user with that email already exists.";
pub const USERNAME_IS_AN_EMAIL: &str =
    "This username is another account's email address; choose another.";
pub const EMAIL_IS_A_USERNAME: &str =
    "This email address is another account's username; use another.";

/// Login names must stay unambiguous: a username may not be another account's
/// email nor an email another account's username, and neither may be taken
/// (the columns' collation compares them case-insensitively). Adds the field
/// errors for `username` and `email` (either may be absent) to `errors`.
pub async fn check_identity_free(
    conn: &mut sqlx::MySqlConnection,
    username: Option<&str>,
    email: Option<&str>,
    except: Option<UserId>,
    errors: &mut FieldErrors,
) -> Result<(), sqlx::Error> {
    let others = |column: &'static str, value: &str| {
        sqlx::query_scalar::<_, UserId>(match column {
            // The collation is named, not left to the column's or the server's
            // default, so that case never tells two identities apart.
            "username" => "SELECT id FROM users WHERE username = ? COLLATE utf8mb4_unicode_ci",
            _ => "SELECT id FROM users WHERE email = ? COLLATE utf8mb4_unicode_ci",
        })
        .bind(value.to_string())
    };
    let taken = |ids: Vec<UserId>| ids.into_iter().any(|id| Some(id) != except);
    if let Some(username) = username {
        if taken(others("username", username).fetch_all(&mut *conn).await?) {
            add(errors, "username", USERNAME_TAKEN);
        } else if taken(others("email", username).fetch_all(&mut *conn).await?) {
            add(errors, "username", USERNAME_IS_AN_EMAIL);
        }
    }
    if let Some(email) = email.filter(|e| !e.is_empty()) {
        if taken(others("email", email).fetch_all(&mut *conn).await?) {
            add(errors, "email", EMAIL_TAKEN);
        } else if taken(others("username", email).fetch_all(&mut *conn).await?) {
            add(errors, "email", EMAIL_IS_A_USERNAME);
        }
    }
    Ok(())
}

/// This database's accounts lock, held on its own connection, so that the checks
/// of [`check_identity_free`] and the write that follows them are not interleaved
/// with another registration or rename. Released by [`AccountsLock::release`], or
/// by the server when the connection closes.
pub struct AccountsLock {
    conn: sqlx::pool::PoolConnection<sqlx::MySql>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("too many account changes at once")]
    Busy,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl AccountsLock {
    pub async fn acquire(pool: &MySqlPool) -> Result<Self, LockError> {
        let mut conn = pool.acquire().await?;
        let locked: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT GET_LOCK({}, 10)",
            events::db::lock_name_sql("accounts")
        ))
        .fetch_one(&mut *conn)
        .await?;
        if locked != Some(1) {
            return Err(LockError::Busy);
        }
        Ok(Self { conn })
    }

    pub fn conn(&mut self) -> &mut sqlx::MySqlConnection {
        &mut self.conn
    }

    pub async fn release(mut self) {
        let _ = sqlx::query(&format!(
            "SELECT RELEASE_LOCK({})",
            events::db::lock_name_sql("accounts")
        ))
        .execute(&mut *self.conn)
        .await;
    }
}

/// Inserts the user; `Ok(None)` when the username or email was taken in a race.
pub async fn insert(
    conn: &mut sqlx::MySqlConnection,
    username: &str,
    email: &str,
    password_hash: &str,
) -> Result<Option<UserId>, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO users (username, email, password_hash, created_at) \
         VALUES (?, NULLIF(?, ''), ?, NOW(6))",
    )
    .bind(username)
    .bind(email)
    .bind(password_hash)
    .execute(conn)
    .await;
    match result {
        Ok(done) => Ok(Some(done.last_insert_id() as UserId)),
        Err(e) if is_duplicate(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn is_duplicate(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|db| db.number() == 1062)
}

/// An absent email reads as `""`, as the contract shows it.
const SELECT_USER: &str =
    "SELECT id, username, COALESCE(email, '') AS email, password_hash, credentials_version \
     FROM users";

/// Finds a user by username, or else by email (the login form takes either).
pub async fn find_for_login(pool: &MySqlPool, login: &str) -> Result<Option<User>, sqlx::Error> {
    let by_name: Option<User> = sqlx::query_as(&format!(
        "{SELECT_USER} WHERE username = ? COLLATE utf8mb4_unicode_ci"
    ))
    .bind(login)
    .fetch_optional(pool)
    .await?;
    if by_name.is_some() || !login.contains('@') {
        return Ok(by_name);
    }
    sqlx::query_as(&format!(
        "{SELECT_USER} WHERE email = ? COLLATE utf8mb4_unicode_ci"
    ))
    .bind(login)
    .fetch_optional(pool)
    .await
}

/// The users whose password changed within the last `within`, by the database's
/// clock, with their credentials versions now.
pub async fn credentials_changed_since(
    pool: &MySqlPool,
    within: std::time::Duration,
) -> Result<Vec<(UserId, u32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, credentials_version FROM users \
         WHERE credentials_changed_at > NOW(6) - INTERVAL ? SECOND",
    )
    .bind(within.as_secs())
    .fetch_all(pool)
    .await
}

pub async fn find(pool: &MySqlPool, id: UserId) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_USER} WHERE id = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Applies the given changes (`Some("")` clears the email); `Ok(false)` when the
/// new username or email was taken in a race.
pub async fn update(
    conn: &mut sqlx::MySqlConnection,
    id: UserId,
    username: Option<&str>,
    email: Option<&str>,
    password_hash: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE users SET username = COALESCE(?, username), \
         email = IF(?, NULLIF(?, ''), email), \
         password_hash = COALESCE(?, password_hash), \
         credentials_version = credentials_version + IF(? IS NULL, 0, 1), \
         credentials_changed_at = IF(? IS NULL, credentials_changed_at, NOW(6)) \
         WHERE id = ?",
    )
    .bind(username)
    .bind(email.is_some())
    .bind(email)
    .bind(password_hash)
    .bind(password_hash)
    .bind(password_hash)
    .bind(id)
    .execute(conn)
    .await;
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_duplicate(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_like_django() {
        let mut errors = FieldErrors::new();
        check_username(Some("ok.name+1@x"), true, &mut errors);
        check_password(Some("pw"), true, &mut errors);
        check_email(Some(""), &mut errors);
        check_email(Some("a@b.co"), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");

        check_username(None, true, &mut errors);
        check_username(Some("has space"), true, &mut errors);
        check_password(Some(" "), true, &mut errors);
        check_email(Some("nope"), &mut errors);
        assert_eq!(errors["username"].len(), 2);
        assert_eq!(errors["password"], vec!["This field may not be blank."]);
        assert_eq!(errors["email"], vec!["Enter a valid email address."]);
    }
}

//! A user erased (`UserErased`): every read-model row of theirs goes, in every
//! table, so a rebuilt view holds nothing of them either.

use sqlx::mysql::MySqlConnection;

use super::Tables;
use crate::event::UserId;

/// Deletes `users`' rows from every read model in `tables`.
pub async fn forget_users(
    conn: &mut MySqlConnection,
    tables: &Tables,
    users: &[UserId],
) -> Result<(), sqlx::Error> {
    for user in users {
        for table in [
            tables.bots,
            tables.chat_history,
            tables.chat_list,
            tables.sessions,
            tables.memory,
            tables.usage,
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = ?"))
                .bind(user)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

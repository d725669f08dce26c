//! Applying a batch of events to a set of read-model tables in a few statements:
//! load the rows the batch touches, fold the batch over them in memory
//! ([`super::fold`]), write back what changed with multi-row statements.
//!
//! The appender applies each commit's events this way to the live tables, and a
//! rebuild replays the whole log into its shadow tables: a handful of round trips
//! per batch instead of several per event.
//!
//! The multi-row upserts read the new row with `VALUES(col)`. MySQL 8 deprecates
//! that in favour of a row alias (`INSERT ... AS new ... UPDATE c = new.c`), but
//! MariaDB 10.11 has no row alias, and a multi-row statement cannot bind each
//! row's values twice: `VALUES()` stays here, where MariaDB needs it, and only
//! here (single-row upserts bind their values again instead).

use sqlx::mysql::{MySql, MySqlConnection};
use sqlx::query_builder::Separated;
use sqlx::QueryBuilder;

use super::fold::{Fold, Touched};
use super::history::MessageStatus;
use super::usage::{self, UsageRow};
use super::Tables;
use crate::event::DomainEvent;
use crate::statement_shape;
use crate::store::EventStamp;

/// Rows per statement. Far below the 65,535 placeholders a statement may hold: the
/// benchmark found 250 both faster and leaner (client buffers grow with the
/// largest statement) than 1,000.
const ROWS_PER_STATEMENT: usize = 250;
/// Bytes of text per statement, well under the server's smallest default packet.
const BYTES_PER_STATEMENT: usize = 2 << 20;

/// Applies `events` (in log order, already decoded) to `tables`.
pub async fn apply_batch(
    conn: &mut MySqlConnection,
    tables: &Tables,
    events: &[(EventStamp, DomainEvent)],
) -> Result<(), sqlx::Error> {
    let mut fold = load(conn, tables, &Touched::of(events)).await?;
    for (event, decoded) in events {
        fold.apply(event, decoded);
    }
    write(conn, tables, fold).await
}

async fn load(
    conn: &mut MySqlConnection,
    tables: &Tables,
    touched: &Touched,
) -> Result<Fold, sqlx::Error> {
    let mut fold = Fold::default();
    if !touched.bots.is_empty() {
        let mut query = QueryBuilder::<MySql>::new(format!(
            "SELECT chatbot_id, user_id, chatbot_name, chatbot_type, chatbot_persona, \
             created_at, deleted_at, model, temperature, max_reply_tokens, version FROM {} \
             WHERE chatbot_id IN ",
            tables.bots
        ));
        let (keys, kept) = statement_shape::padded(&touched.bots);
        query.push_tuples(keys, |mut b, id| {
            b.push_bind(*id);
        });
        let bots: Vec<super::Bot> = query
            .build_query_as()
            .persistent(kept)
            .fetch_all(&mut *conn)
            .await?;
        fold.bots = bots.into_iter().map(|b| (b.chatbot_id, b)).collect();
    }
    if !touched.sessions.is_empty() {
        let mut query = QueryBuilder::<MySql>::new(format!(
            "SELECT session_id, user_id, refresh_jti, created_at, revoked_at, revoked_reason, \
             last_active_at FROM {} WHERE session_id IN ",
            tables.sessions
        ));
        let (keys, kept) = statement_shape::padded(&touched.sessions);
        query.push_tuples(keys, |mut b, id| {
            b.push_bind(id);
        });
        let sessions: Vec<super::fold::SessionRow> = query
            .build_query_as()
            .persistent(kept)
            .fetch_all(&mut *conn)
            .await?;
        fold.sessions = sessions
            .into_iter()
            .map(|s| (s.session_id.clone(), s))
            .collect();
    }
    if !touched.memory.is_empty() {
        let mut query = QueryBuilder::<MySql>::new(format!(
            "SELECT user_id, chatbot_id, summary, summary_covers, profile, profile_covers, \
             erased_through, updated_at FROM {} WHERE (user_id, chatbot_id) IN ",
            tables.memory
        ));
        let (keys, kept) = statement_shape::padded(&touched.memory);
        query.push_tuples(keys, |mut b, (user, bot)| {
            b.push_bind(*user).push_bind(*bot);
        });
        let memory: Vec<super::fold::MemoryRow> = query
            .build_query_as()
            .persistent(kept)
            .fetch_all(&mut *conn)
            .await?;
        fold.memory = memory
            .into_iter()
            .map(|m| ((m.user_id, m.chatbot_id), m))
            .collect();
    }
    if !touched.usage.is_empty() {
        let mut query = QueryBuilder::<MySql>::new(format!(
            "SELECT user_id, day, chatbot_id, kind, model, calls, prompt_tokens, \
             completion_tokens FROM {} WHERE (user_id, day, chatbot_id, kind, model) IN ",
            tables.usage
        ));
        let (keys, kept) = statement_shape::padded(&touched.usage);
        query.push_tuples(keys, |mut b, (user, day, bot, kind, model)| {
            b.push_bind(*user)
                .push_bind(*day)
                .push_bind(*bot)
                .push_bind(*kind)
                .push_bind(model);
        });
        let rows: Vec<UsageRow> = query
            .build_query_as()
            .persistent(kept)
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            let kind = if row.kind == usage::MEMORY {
                usage::MEMORY
            } else {
                usage::REPLY
            };
            fold.usage.insert(
                (row.user_id, row.day, row.chatbot_id, kind, row.model),
                row.amounts,
            );
        }
    }
    Ok(fold)
}

async fn write(conn: &mut MySqlConnection, tables: &Tables, fold: Fold) -> Result<(), sqlx::Error> {
    // What the batch still holds of an erased user came after the erasure.
    let erased: Vec<_> = fold.erased_users.iter().copied().collect();
    super::erasure::forget_users(conn, tables, &erased).await?;
    write_bots(conn, tables, &fold).await?;
    write_history(conn, tables, &fold).await?;
    write_chat_list(conn, tables, &fold).await?;
    write_sessions(conn, tables, &fold).await?;
    write_memory(conn, tables, &fold).await?;
    write_usage(conn, tables, &fold).await
}

async fn write_usage(
    conn: &mut MySqlConnection,
    tables: &Tables,
    fold: &Fold,
) -> Result<(), sqlx::Error> {
    let rows: Vec<_> = fold.usage.iter().collect();
    insert_rows(
        conn,
        &format!(
            "INSERT INTO {} (user_id, day, chatbot_id, kind, model, calls, prompt_tokens, \
             completion_tokens) ",
            tables.usage
        ),
        " ON DUPLICATE KEY UPDATE calls = VALUES(calls), \
         prompt_tokens = VALUES(prompt_tokens), completion_tokens = VALUES(completion_tokens)",
        &rows,
        |((.., model), _)| model.len(),
        |b, ((user, day, bot, kind, model), amounts)| {
            b.push_bind(*user)
                .push_bind(*day)
                .push_bind(*bot)
                .push_bind(*kind)
                .push_bind(model)
                .push_bind(amounts.calls)
                .push_bind(amounts.prompt_tokens)
                .push_bind(amounts.completion_tokens);
        },
    )
    .await
}

async fn write_bots(
    conn: &mut MySqlConnection,
    tables: &Tables,
    fold: &Fold,
) -> Result<(), sqlx::Error> {
    let bots: Vec<_> = fold
        .changed_bots
        .iter()
        .filter_map(|id| fold.bots.get(id))
        .collect();
    insert_rows(
        conn,
        &format!(
            "INSERT INTO {} (chatbot_id, user_id, chatbot_name, chatbot_type, \
             chatbot_persona, created_at, deleted_at, model, temperature, max_reply_tokens, \
             version) ",
            tables.bots
        ),
        " ON DUPLICATE KEY UPDATE chatbot_name = VALUES(chatbot_name), \
         chatbot_type = VALUES(chatbot_type), chatbot_persona = VALUES(chatbot_persona), \
         deleted_at = VALUES(deleted_at), model = VALUES(model), \
         temperature = VALUES(temperature), max_reply_tokens = VALUES(max_reply_tokens), \
         version = VALUES(version)",
        &bots,
        |bot| bot.chatbot_name.len() + bot.chatbot_persona.len(),
        |b, bot| {
            b.push_bind(bot.chatbot_id)
                .push_bind(bot.user_id)
                .push_bind(&bot.chatbot_name)
                .push_bind(bot.chatbot_type)
                .push_bind(&bot.chatbot_persona)
                .push_bind(bot.created_at)
                .push_bind(bot.deleted_at)
                .push_bind(&bot.model)
                .push_bind(bot.temperature)
                .push_bind(bot.max_reply_tokens)
                .push_bind(bot.version);
        },
    )
    .await
}

async fn write_history(
    conn: &mut MySqlConnection,
    tables: &Tables,
    fold: &Fold,
) -> Result<(), sqlx::Error> {
    // Rows from earlier batches go first: the batch's own rows are what is
    // left after its clears and regenerations.
    for ((user, bot), before) in &fold.cleared {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE user_id = ? AND chatbot_id = ? AND seq < ?",
            tables.chat_history
        ))
        .bind(user)
        .bind(bot)
        .bind(before)
        .execute(&mut *conn)
        .await?;
    }
    let withdrawn: Vec<&String> = fold.withdrawn.iter().collect();
    for chunk in withdrawn.chunks(ROWS_PER_STATEMENT) {
        let mut delete = QueryBuilder::<MySql>::new(format!(
            "DELETE FROM {} WHERE reply_to IN ",
            tables.chat_history
        ));
        let (ids, kept) = statement_shape::padded(chunk);
        delete.push_tuples(ids, |mut b, id| {
            b.push_bind(*id);
        });
        delete.build().persistent(kept).execute(&mut *conn).await?;
    }
    let history: Vec<_> = fold.history().collect();
    insert_rows(
        conn,
        &format!(
            "INSERT INTO {} (user_id, chatbot_id, seq, message_id, reply_to, by_user, \
             content, status, created_at, attempt) ",
            tables.chat_history
        ),
        "",
        &history,
        |entry| entry.row.content.len(),
        |b, entry| {
            b.push_bind(entry.user_id)
                .push_bind(entry.chatbot_id)
                .push_bind(entry.row.seq)
                .push_bind(&entry.row.message_id)
                .push_bind(&entry.row.reply_to)
                .push_bind(entry.row.by_user)
                .push_bind(&entry.row.content)
                .push_bind(&entry.row.status)
                .push_bind(entry.row.created_at)
                .push_bind(entry.row.attempt);
        },
    )
    .await?;
    for status in [
        MessageStatus::Pending,
        MessageStatus::Done,
        MessageStatus::Failed,
        MessageStatus::Stopped,
    ] {
        let ids: Vec<&String> = fold
            .history_status
            .iter()
            .filter(|(_, s)| **s == status)
            .map(|(id, _)| id)
            .collect();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut update =
                QueryBuilder::<MySql>::new(format!("UPDATE {} SET status = ", tables.chat_history));
            update
                .push_bind(status.as_str())
                .push(" WHERE message_id IN ");
            let (ids, kept) = statement_shape::padded(chunk);
            update.push_tuples(ids, |mut b, id| {
                b.push_bind(*id);
            });
            update.build().persistent(kept).execute(&mut *conn).await?;
        }
    }
    for (message_id, attempt) in &fold.history_attempts {
        sqlx::query(&format!(
            "UPDATE {} SET attempt = ? WHERE message_id = ?",
            tables.chat_history
        ))
        .bind(attempt)
        .bind(message_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn write_chat_list(
    conn: &mut MySqlConnection,
    tables: &Tables,
    fold: &Fold,
) -> Result<(), sqlx::Error> {
    // Rows from earlier batches take a renamed bot's new name; the rows this
    // batch writes have it already.
    for ((user, bot), name) in &fold.renamed {
        sqlx::query(&format!(
            "UPDATE {} SET chatbot_name = ? WHERE user_id = ? AND chatbot_id = ?",
            tables.chat_list
        ))
        .bind(name)
        .bind(user)
        .bind(bot)
        .execute(&mut *conn)
        .await?;
    }
    let (listed, unlisted): (Vec<_>, Vec<_>) = fold
        .chat_list
        .iter()
        .partition(|(_, entry)| entry.is_some());
    let unlisted: Vec<_> = unlisted.into_iter().map(|(key, _)| *key).collect();
    for chunk in unlisted.chunks(ROWS_PER_STATEMENT) {
        let mut delete = QueryBuilder::<MySql>::new(format!(
            "DELETE FROM {} WHERE (user_id, chatbot_id) IN ",
            tables.chat_list
        ));
        let (keys, kept) = statement_shape::padded(chunk);
        delete.push_tuples(keys, |mut b, (user, bot)| {
            b.push_bind(*user).push_bind(*bot);
        });
        delete.build().persistent(kept).execute(&mut *conn).await?;
    }
    let listed: Vec<_> = listed
        .into_iter()
        .filter_map(|(key, entry)| entry.as_ref().map(|entry| (*key, entry)))
        .collect();
    insert_rows(
        conn,
        &format!(
            "REPLACE INTO {} (user_id, chatbot_id, chatbot_name, last_content, last_at, \
             last_seq, last_position) ",
            tables.chat_list
        ),
        "",
        &listed,
        |(_, entry)| entry.last_content.len(),
        |b, ((user, bot), entry)| {
            b.push_bind(*user)
                .push_bind(*bot)
                .push_bind(&entry.chatbot_name)
                .push_bind(&entry.last_content)
                .push_bind(entry.last_at)
                .push_bind(entry.last_seq)
                .push_bind(entry.last_position);
        },
    )
    .await
}

async fn write_sessions(
    conn: &mut MySqlConnection,
    tables: &Tables,
    fold: &Fold,
) -> Result<(), sqlx::Error> {
    let sessions: Vec<_> = fold
        .changed_sessions
        .iter()
        .filter_map(|id| fold.sessions.get(id))
        .collect();
    insert_rows(
        conn,
        &format!(
            "INSERT INTO {} (session_id, user_id, refresh_jti, created_at, revoked_at, \
             revoked_reason, last_active_at) ",
            tables.sessions
        ),
        " ON DUPLICATE KEY UPDATE refresh_jti = VALUES(refresh_jti), \
         revoked_at = VALUES(revoked_at), revoked_reason = VALUES(revoked_reason), \
         last_active_at = VALUES(last_active_at)",
        &sessions,
        |_| 0,
        |b, s| {
            b.push_bind(&s.session_id)
                .push_bind(s.user_id)
                .push_bind(&s.refresh_jti)
                .push_bind(s.created_at)
                .push_bind(s.revoked_at)
                .push_bind(&s.revoked_reason)
                .push_bind(s.last_active_at);
        },
    )
    .await
}

async fn write_memory(
    conn: &mut MySqlConnection,
    tables: &Tables,
    fold: &Fold,
) -> Result<(), sqlx::Error> {
    let memory: Vec<_> = fold
        .changed_memory
        .iter()
        .filter_map(|key| fold.memory.get(key))
        .collect();
    insert_rows(
        conn,
        &format!(
            "INSERT INTO {} (user_id, chatbot_id, summary, summary_covers, profile, \
             profile_covers, erased_through, updated_at) ",
            tables.memory
        ),
        " ON DUPLICATE KEY UPDATE summary = VALUES(summary), \
         summary_covers = VALUES(summary_covers), profile = VALUES(profile), \
         profile_covers = VALUES(profile_covers), erased_through = VALUES(erased_through), \
         updated_at = VALUES(updated_at)",
        &memory,
        |row| {
            let m = &row.memory;
            m.summary.as_ref().map_or(0, String::len) + m.profile.as_ref().map_or(0, String::len)
        },
        |b, row| {
            let m = &row.memory;
            b.push_bind(row.user_id)
                .push_bind(row.chatbot_id)
                .push_bind(&m.summary)
                .push_bind(m.summary_covers)
                .push_bind(&m.profile)
                .push_bind(m.profile_covers)
                .push_bind(m.erased_through)
                .push_bind(m.updated_at);
        },
    )
    .await
}

/// `head VALUES (…), (…) tail`, as few statements as the limits allow.
async fn insert_rows<'r, T>(
    conn: &mut MySqlConnection,
    head: &str,
    tail: &str,
    rows: &'r [T],
    text_bytes: impl Fn(&T) -> usize,
    bind: impl for<'q> Fn(&mut Separated<'q, 'r, MySql, &'static str>, &'r T),
) -> Result<(), sqlx::Error> {
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len() && end - start < ROWS_PER_STATEMENT {
            bytes += text_bytes(&rows[end]);
            end += 1;
            if bytes >= BYTES_PER_STATEMENT {
                break;
            }
        }
        let (count, kept) = statement_shape::next_chunk(end - start);
        let end = start + count;
        let mut insert = QueryBuilder::<'r, MySql>::new(head);
        insert.push_values(&rows[start..end], |mut b, row| bind(&mut b, row));
        insert.push(tail);
        insert.build().persistent(kept).execute(&mut *conn).await?;
        start = end;
    }
    Ok(())
}

//! `bots/create|detail|list|delete` and `bots/get_persona`. Failures of the bot
//! module itself answer HTTP 200 with `code: -1`, as the app expects.

use super::page::Page;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use events::event::{BotId, UserId};
use events::projections::BotsProjection;

use super::{metadata, publish_in_background};
use crate::auth::Caller;
use crate::domain::bots::{self, BotChanges, NewBot, RequestedChanges};
use crate::domain::{required, DomainError};
use crate::error::ApiError;
use crate::extract::{lenient, BotPayload, CorrelationId};
use crate::openapi::{BotCreated, BotDetails, BotList, Done, Personas};
use crate::state::AppState;
use crate::views::{bot_detail, bot_summary, ok};

pub const DETAILS_NOT_FOUND: &str = "DetailsNotFound";
/// Spelled as the original's document publishes it.
pub const CHATBOT_NOT_FOUND: &str = "ChatbotNotFOund";

fn bot_failure(e: DomainError) -> ApiError {
    ApiError::from(e).into_bot_module()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateBody {
    /// Legacy mode's caller; with a token, the token's user (or omitted).
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[schema(required = true)]
    chatbot_name: Option<String>,
    /// 0: an assistant; 1: a cosplay bot, which speaks as `chatbot_persona`.
    #[serde(default, deserialize_with = "lenient::int")]
    #[schema(required = true, minimum = 0, maximum = 1)]
    chatbot_type: Option<i64>,
    chatbot_persona: Option<String>,
}

/// Creates a bot: an assistant, or a cosplay bot with a persona.
#[utoipa::path(post, path = "/bots/create", tag = "bots", request_body(content((CreateBody = "application/json"), (CreateBody = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "The new bot's id (or the bot module's failure).", body = BotCreated)), security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    correlation: CorrelationId,
    BotPayload(body): BotPayload<CreateBody>,
) -> Result<Json<Value>, ApiError> {
    let user = caller
        .acting_for(body.user_id, &state)
        .await
        .map_err(ApiError::into_bot_module)?;
    let bot = NewBot::parse(body.chatbot_name, body.chatbot_type, body.chatbot_persona)
        .map_err(bot_failure)?;
    let (bot_id, events) = bots::create_bot(
        &state.store,
        user,
        bot,
        state.config.user_max_bots,
        metadata(correlation, user),
    )
    .await
    .map_err(bot_failure)?;
    publish_in_background(&state, events);
    Ok(ok(json!([{ "chatbot_id": bot_id }])))
}

/// A change to a bot: give only what changes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpdateBody {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    #[schema(required = true)]
    chatbot_id: Option<i64>,
    chatbot_name: Option<String>,
    #[serde(default, deserialize_with = "lenient::int")]
    chatbot_type: Option<i64>,
    chatbot_persona: Option<String>,
    /// One of the operator's `ALLOWED_MODELS`.
    model: Option<String>,
    /// From 0 to 2.
    #[serde(default, deserialize_with = "lenient::float")]
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f64>,
    /// From 1 to the operator's `BOT_MAX_REPLY_TOKENS`.
    #[serde(default, deserialize_with = "lenient::int")]
    #[schema(minimum = 1)]
    max_reply_tokens: Option<i64>,
}

/// Changes a bot: its name, kind, persona, and the model settings of its
/// replies. The next reply uses them; a reply being written keeps those it
/// started with. Answers the bot as it now is.
#[utoipa::path(post, path = "/bots/update", tag = "bots", request_body(content((UpdateBody = "application/json"), (UpdateBody = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "The bot as it now is, with its id (or the bot module's failure).", body = BotList)), security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    correlation: CorrelationId,
    BotPayload(body): BotPayload<UpdateBody>,
) -> Result<Json<Value>, ApiError> {
    let (user, bot_id) = caller_and_bot(
        &caller,
        &state,
        (body.user_id, body.chatbot_id),
        CHATBOT_NOT_FOUND,
    )
    .await?;
    let asked = RequestedChanges {
        name: body.chatbot_name,
        kind: body.chatbot_type,
        persona: body.chatbot_persona,
        model: body.model,
        temperature: body.temperature,
        max_reply_tokens: body.max_reply_tokens,
    };
    let changes = BotChanges::parse(asked, &state.config.bot_settings).map_err(bot_failure)?;
    match bots::update_bot(
        &state.store,
        user,
        bot_id,
        changes,
        metadata(correlation, user),
    )
    .await
    {
        Ok((bot, events)) => {
            // The chat list shows the bot's name.
            state.read_cache.invalidate(user);
            publish_in_background(&state, events);
            Ok(ok(json!([bot_summary(&bot)])))
        }
        Err(DomainError::BotNotFound) => Err(ApiError::BotModule(CHATBOT_NOT_FOUND.into())),
        Err(e) => Err(bot_failure(e)),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BotRef {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    #[schema(required = true)]
    chatbot_id: Option<i64>,
}

/// One of the caller's bots.
#[utoipa::path(post, path = "/bots/detail", tag = "bots", request_body(content((BotRef = "application/json"), (BotRef = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "The bot (or the bot module's failure).", body = BotDetails)), security(("bearer" = [])))]
pub async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    BotPayload(body): BotPayload<BotRef>,
) -> Result<Json<Value>, ApiError> {
    let (user, bot_id) = caller_and_bot(
        &caller,
        &state,
        (body.user_id, body.chatbot_id),
        DETAILS_NOT_FOUND,
    )
    .await?;
    match BotsProjection::find_owned(&state.pool, user, bot_id).await? {
        Some(bot) => Ok(ok(json!([bot_detail(&state.keyring.open_row(bot).await?)]))),
        None => Err(ApiError::BotModule(DETAILS_NOT_FOUND.into())),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ListBody {
    #[serde(default, deserialize_with = "lenient::int")]
    user_id: Option<i64>,
    /// Paging (additive): the bots after this one, at most `limit` of them.
    #[serde(default, deserialize_with = "lenient::int")]
    after: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    limit: Option<i64>,
}

/// The caller's bots, oldest first; `after` and `limit` page through them.
#[utoipa::path(post, path = "/bots/list", operation_id = "bots_list", tag = "bots", request_body(content((ListBody = "application/json"), (ListBody = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "The bots (or the bot module's failure).", body = BotList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    BotPayload(body): BotPayload<ListBody>,
) -> Result<Response, ApiError> {
    let user = caller
        .acting_for(body.user_id, &state)
        .await
        .map_err(ApiError::into_bot_module)?;
    let page = Page::parse(body.after, body.limit).map_err(ApiError::into_bot_module)?;
    let turn = state.heavy_reads.turn(user).await;
    let mut bots =
        BotsProjection::list(&state.pool, user, page.after.unwrap_or(0), page.limit).await?;
    state.keyring.open_rows(&mut bots).await?;
    let body = ok(Value::Array(bots.iter().map(bot_summary).collect())).0;
    Ok(turn.answer(Bytes::from(body.to_string())))
}

/// Deletes a bot. Its conversation stays in the log; its streams end.
#[utoipa::path(post, path = "/bots/delete", tag = "bots", request_body(content((BotRef = "application/json"), (BotRef = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "Done (or the bot module's failure).", body = Done)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    correlation: CorrelationId,
    BotPayload(body): BotPayload<BotRef>,
) -> Result<Json<Value>, ApiError> {
    let (user, bot_id) = caller_and_bot(
        &caller,
        &state,
        (body.user_id, body.chatbot_id),
        CHATBOT_NOT_FOUND,
    )
    .await?;
    match bots::delete_bot(&state.store, user, bot_id, metadata(correlation, user)).await {
        Ok(events) => {
            state.read_cache.invalidate(user);
            publish_in_background(&state, events);
            Ok(ok(json!([])))
        }
        Err(DomainError::BotNotFound) => Err(ApiError::BotModule(CHATBOT_NOT_FOUND.into())),
        Err(e) => Err(bot_failure(e)),
    }
}

/// The user the caller acts for, and the bot the body names, failing the bot
/// module's way; an unknown user (legacy mode) gets `not_found`, as an unknown
/// bot does.
async fn caller_and_bot(
    caller: &Caller,
    state: &AppState,
    (user_id, chatbot_id): (Option<i64>, Option<i64>),
    not_found: &str,
) -> Result<(UserId, BotId), ApiError> {
    let user = caller
        .acting_for(user_id, state)
        .await
        .map_err(|e| not_found_as(e, not_found))?;
    let bot_id = required(chatbot_id, "chatbot_id").map_err(bot_failure)?;
    Ok((user, bot_id))
}

/// An unknown user (legacy mode) gets the route's usual "not found".
fn not_found_as(error: ApiError, reason: &str) -> ApiError {
    match error {
        ApiError::NotFound(_) => ApiError::BotModule(reason.into()),
        other => other,
    }
}

/// The preset personas the app offers when creating a cosplay bot.
#[utoipa::path(get, path = "/bots/get_persona", tag = "bots",
    responses((status = 200, description = "The preset personas.", body = Personas)))]
pub async fn get_persona(State(state): State<AppState>) -> Json<Value> {
    ok(json!(state.config.persona_presets))
}

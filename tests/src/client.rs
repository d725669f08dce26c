//! An HTTP client that speaks to the api the way the mobile app and new clients do.

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
}

/// A response: status, headers and parsed JSON body (`Null` when the body is not
/// JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Client {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.into(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        Ok(Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        })
    }

    fn with_token(
        request: reqwest::RequestBuilder,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        match token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    /// POST a JSON body to `path` (appended to the base as is, `//` included).
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(Self::with_token(request, token)).await
    }

    /// POST JSON with a chosen `X-Request-Id`.
    pub async fn post_json_with_request_id(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
        request_id: &str,
    ) -> anyhow::Result<Reply> {
        self.post_json_with_header(path, body, token, ("x-request-id", request_id))
            .await
    }

    /// POST JSON with one extra header (`X-Forwarded-For`, say).
    pub async fn post_json_with_header(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
        (name, value): (&str, &str),
    ) -> anyhow::Result<Reply> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(name, value)
            .json(body);
        self.send(Self::with_token(request, token)).await
    }

    /// POST `application/x-www-form-urlencoded`, every value a string, as the app does.
    pub async fn post_form(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        token: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let request = self.http.post(format!("{}{path}", self.base)).form(fields);
        self.send(Self::with_token(request, token)).await
    }

    /// POST a raw body with the given content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, content_type)
            .body(body.to_string());
        self.send(Self::with_token(request, token)).await
    }

    pub async fn patch_json(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let request = self.http.patch(format!("{}{path}", self.base)).json(body);
        self.send(Self::with_token(request, token)).await
    }

    pub async fn delete_json(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let request = self.http.delete(format!("{}{path}", self.base)).json(body);
        self.send(Self::with_token(request, token)).await
    }

    pub async fn get(&self, path_and_query: &str, token: Option<&str>) -> anyhow::Result<Reply> {
        let request = self.http.get(format!("{}{path_and_query}", self.base));
        self.send(Self::with_token(request, token)).await
    }

    /// Registers and logs in; returns (user_id, access, refresh).
    pub async fn signup(
        &self,
        username: &str,
        password: &str,
    ) -> anyhow::Result<(i64, String, String)> {
        let registered = self
            .post_json(
                "/users/register/",
                &serde_json::json!({ "username": username, "password": password }),
                None,
            )
            .await?;
        anyhow::ensure!(registered.status == 201, "register failed: {registered:?}");
        self.login(username, password).await
    }

    /// Logs in (by username or email); returns (user_id, access, refresh).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> anyhow::Result<(i64, String, String)> {
        let login = self
            .post_json(
                "/login/",
                &serde_json::json!({ "username": username, "password": password }),
                None,
            )
            .await?;
        anyhow::ensure!(login.status == 200, "login failed: {login:?}");
        let text = |field: &str| login.body[field].as_str().unwrap_or_default().to_string();
        Ok((
            login.body["user_id"].as_i64().unwrap_or_default(),
            text("access"),
            text("refresh"),
        ))
    }

    /// Creates a bot (by JSON, with a token) and returns its id.
    pub async fn create_bot(
        &self,
        token: &str,
        name: &str,
        kind: i64,
        persona: &str,
    ) -> anyhow::Result<i64> {
        let created = self
            .post_json(
                "/bots/create",
                &serde_json::json!({ "chatbot_name": name, "chatbot_type": kind, "chatbot_persona": persona }),
                Some(token),
            )
            .await?;
        anyhow::ensure!(
            created.body["code"] == 200,
            "bots/create failed: {created:?}"
        );
        created.body["data"][0]["chatbot_id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no chatbot_id in {created:?}"))
    }

    /// A new user with one plain bot: (user_id, access token, bot_id).
    pub async fn user_with_bot(&self, username: &str) -> anyhow::Result<(i64, String, i64)> {
        let (user, access, _) = self.signup(username, "pass word").await?;
        let bot = self.create_bot(&access, "Bot", 0, "").await?;
        Ok((user, access, bot))
    }

    /// `new_chat`, waiting for the reply: expects 200.
    pub async fn chat(&self, token: &str, bot: i64, input: &str) -> anyhow::Result<Reply> {
        let reply = self
            .post_json(
                "/chat/new_chat",
                &serde_json::json!({ "chatbot_id": bot, "input": input }),
                Some(token),
            )
            .await?;
        anyhow::ensure!(reply.status == 200, "new_chat failed: {reply:?}");
        Ok(reply)
    }

    /// `new_chat?wait=false`: expects 202 and returns the message id.
    pub async fn post_later(&self, token: &str, bot: i64, input: &str) -> anyhow::Result<String> {
        let reply = self
            .post_json(
                "/chat/new_chat?wait=false",
                &serde_json::json!({ "chatbot_id": bot, "input": input }),
                Some(token),
            )
            .await?;
        anyhow::ensure!(reply.status == 202, "expected 202, got {reply:?}");
        reply.body["data"]["message_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no message_id in {reply:?}"))
    }

    /// Polls `GET path_and_query` until it answers 200, and returns that answer.
    pub async fn wait_for_ok(
        &self,
        path_and_query: &str,
        token: Option<&str>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Reply> {
        crate::eventually(
            timeout,
            &format!("GET {path_and_query} to answer 200"),
            || async {
                Ok(self
                    .get(path_and_query, token)
                    .await
                    .ok()
                    .filter(|r| r.status == 200))
            },
        )
        .await
    }
}

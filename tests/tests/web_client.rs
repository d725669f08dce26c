//! The reference web client (`/app/`) in a real browser: Debian's Chromium,
//! headless, through ChromeDriver (issue 20). Each test saves a screenshot under
//! `target/browser-screenshots/` when it fails; the whole flow saves `chat.png`,
//! the README's picture.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::json;

use system_tests::browser::{screenshot_on_failure, Browser};
use system_tests::{free_port, Client, Stack, StackOptions};

const WAIT: Duration = Duration::from_secs(20);

/// Registers (or logs in) `name` in the page at `url`, and waits for the bots.
async fn sign_up(browser: &Browser, url: &str, name: &str) -> anyhow::Result<()> {
    browser.client.goto(url).await?;
    browser
        .fill("#auth-form input[name=username]", name)
        .await?;
    browser
        .fill("#auth-form input[name=password]", "pass word")
        .await?;
    browser.click("#auth-form button[value=register]").await?;
    browser
        .until(WAIT, "signed in", || async {
            browser.text("#who").await.as_deref() == Some(name)
        })
        .await
}

/// Creates a bot in the page and opens its chat.
async fn open_new_bot(browser: &Browser, name: &str, persona: Option<&str>) -> anyhow::Result<()> {
    browser.fill("#bot-form input[name=name]", name).await?;
    if let Some(persona) = persona {
        browser
            .client
            .find(Locator::Css("#bot-form select[name=kind]"))
            .await?
            .select_by_value("1")
            .await?;
        browser
            .fill("#bot-form input[name=persona]", persona)
            .await?;
    }
    browser.click("#bot-form button[type=submit]").await?;
    let button = format!("//ul[@id='bot-list']//button[starts-with(normalize-space(.), '{name}')]");
    browser
        .client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(&button))
        .await?
        .click()
        .await?;
    browser
        .until(WAIT, "the chat", || async {
            browser.text("#chat-title").await.as_deref() == Some(name)
        })
        .await
}

async fn send(browser: &Browser, text: &str) -> anyhow::Result<()> {
    browser.fill("#send-form input[name=input]", text).await?;
    // The keyboard sends, as a person would.
    browser
        .client
        .find(Locator::Css("#send-form input[name=input]"))
        .await?
        .send_keys("\u{E007}")
        .await?;
    Ok(())
}

/// A fresh token of `username`'s (a login of its own), and their first bot.
async fn first_bot(base: &str, username: &str) -> anyhow::Result<(String, i64)> {
    let client = Client::new(base.to_string());
    let (_, token, _) = client.login(username, "pass word").await?;
    let bots = client
        .post_json("/bots/list", &json!({}), Some(&token))
        .await?;
    let bot = bots.body["data"][0]["chatbot_id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("{username} has no bot: {:?}", bots.body))?;
    Ok((token, bot))
}

/// Whether the page shows its "reconnecting…" badge.
async fn reconnecting(browser: &Browser) -> Option<bool> {
    let badge = browser
        .client
        .find(Locator::Css("#connection"))
        .await
        .ok()?;
    badge.is_displayed().await.ok()
}

/// The texts of the finished bot rows on the page.
async fn replies(browser: &Browser) -> Vec<String> {
    let Ok(rows) = browser
        .client
        .find_all(Locator::Css("#messages li.bot:not(.writing)"))
        .await
    else {
        return Vec::new();
    };
    let mut texts = Vec::new();
    for row in rows {
        texts.push(row.text().await.unwrap_or_default());
    }
    texts
}

#[tokio::test]
async fn the_whole_flow_shows_the_reply_growing_word_by_word() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("WORKER_ROLES".into(), "replies".into())],
        ..Default::default()
    })
    .await?;
    stack.model.set_chunk_delay(Duration::from_millis(150));
    let browser = Browser::start().await?;
    let app = format!("{}/app/", stack.client(0).base);
    let result = screenshot_on_failure(&browser, "whole-flow", async {
        sign_up(&browser, &app, "poet").await?;
        open_new_bot(&browser, "Moon talk", Some("Li Bai")).await?;
        send(&browser, "tell me about the moon over the river tonight").await?;

        // Watch the reply being written: its distinct texts, in order.
        let mut partials: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        let last = loop {
            if let Some(text) = browser.text("#messages li.writing").await {
                if !text.is_empty() && partials.last() != Some(&text) {
                    partials.push(text);
                }
            }
            if let Some(done) = replies(&browser).await.pop() {
                break done;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no reply: {partials:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        anyhow::ensure!(
            last.ends_with("to: tell me about the moon over the river tonight"),
            "{last}"
        );
        anyhow::ensure!(
            partials.len() >= 3,
            "the reply grew in {} steps: {partials:?}",
            partials.len()
        );
        for partial in &partials {
            anyhow::ensure!(
                last.starts_with(partial.trim_end()),
                "{partial:?} is not a prefix of {last:?}"
            );
        }
        let shot = browser.screenshot("chat").await?;
        println!(
            "the reply grew in {} steps before it was final; screenshot {}",
            partials.len(),
            shot.display()
        );
        Ok(())
    })
    .await;
    browser.close().await?;
    result?;
    stack.teardown().await
}

#[tokio::test]
async fn a_reply_survives_the_api_restarting_mid_stream_once() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        env: vec![("WORKER_ROLES".into(), "replies".into())],
        ..Default::default()
    })
    .await?;
    stack.model.set_chunk_delay(Duration::from_millis(400));
    let base = stack.client(0).base;
    let port = stack.apis[0]
        .port
        .ok_or_else(|| anyhow::anyhow!("no port"))?;
    let browser = Browser::start().await?;
    let result = screenshot_on_failure(&browser, "api-restart", async {
        sign_up(&browser, &format!("{base}/app/"), "steady").await?;
        open_new_bot(&browser, "Steady", None).await?;
        send(&browser, "keep talking while the server restarts").await?;
        browser
            .until(WAIT, "the reply to start", || async {
                browser
                    .text("#messages li.writing")
                    .await
                    .is_some_and(|t| !t.is_empty())
            })
            .await?;

        stack.apis[0].signal("KILL")?;
        stack.apis[0].wait(Duration::from_secs(10)).await?;
        browser
            .until(WAIT, "the reconnecting state", || async {
                reconnecting(&browser).await == Some(true)
            })
            .await?;
        let again = stack.start_process(
            "api",
            "api-again",
            &[("BIND_ADDR", &format!("127.0.0.1:{port}"))],
        )?;
        stack.apis[0] = again;
        Client::new(base.clone())
            .wait_for_ok("/readyz", None, WAIT)
            .await?;

        // EventSource reconnects on its own, from its Last-Event-ID.
        browser
            .until(Duration::from_secs(40), "the reply, resumed", || async {
                !replies(&browser).await.is_empty()
            })
            .await?;
        browser
            .until(WAIT, "the connection back", || async {
                reconnecting(&browser).await == Some(false)
            })
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let shown = replies(&browser).await;
        anyhow::ensure!(shown.len() == 1, "the reply is shown once: {shown:?}");
        anyhow::ensure!(
            shown[0].ends_with("to: keep talking while the server restarts"),
            "{shown:?}"
        );
        Ok(())
    })
    .await;
    browser.close().await?;
    result?;
    stack.teardown().await
}

#[tokio::test]
async fn two_users_in_two_browsers_see_only_their_own() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("WORKER_ROLES".into(), "replies".into())],
        ..Default::default()
    })
    .await?;
    let base = stack.client(0).base;
    let (ann, bob) = (Browser::start().await?, Browser::start().await?);
    let result = screenshot_on_failure(&ann, "two-users", async {
        sign_up(&ann, &format!("{base}/app/"), "ann").await?;
        sign_up(&bob, &format!("{base}/app/"), "bob").await?;
        open_new_bot(&ann, "Ann diary", None).await?;
        open_new_bot(&bob, "Bob secrets", None).await?;
        send(&bob, "my secret plan").await?;
        bob.until(WAIT, "bob's reply", || async {
            !replies(&bob).await.is_empty()
        })
        .await?;

        let ann_list = ann.text("#bot-list").await.unwrap_or_default();
        anyhow::ensure!(!ann_list.contains("Bob"), "ann sees {ann_list:?}");
        // Ann's page, with Ann's token, asks for Bob's conversation directly.
        let (_, bob_bot) = first_bot(&base, "bob").await?;
        let reached = ann
            .client
            .execute(
                "const t = JSON.parse(sessionStorage.getItem('tokens')).access;
                 return fetch('/chat/history?format=object&chatbot_id=' + arguments[0],
                              { headers: { Authorization: 'Bearer ' + t } })
                   .then(r => r.json().then(b => [r.status, JSON.stringify(b.data || [])]));",
                vec![json!(bob_bot)],
            )
            .await?;
        let text = reached.to_string();
        anyhow::ensure!(
            !text.contains("secret plan"),
            "ann reached bob's conversation: {text}"
        );
        Ok(())
    })
    .await;
    ann.close().await?;
    bob.close().await?;
    result?;
    stack.teardown().await
}

#[tokio::test]
async fn the_client_on_another_origin_works_only_when_that_origin_is_allowed() -> anyhow::Result<()>
{
    let mut stack = Stack::start(StackOptions {
        apis: 0,
        workers: 0,
        ..Default::default()
    })
    .await?;
    let (backend, allowed, other) = (free_port()?, free_port()?, free_port()?);
    let allowed_origin = format!("http://127.0.0.1:{allowed}");
    let mut processes = Vec::new();
    for (name, port, cors) in [
        ("backend", backend, allowed_origin.as_str()),
        ("allowed-site", allowed, ""),
        ("other-site", other, ""),
    ] {
        processes.push(stack.start_process(
            "api",
            name,
            &[
                ("BIND_ADDR", &format!("127.0.0.1:{port}")),
                ("CORS_ALLOWED_ORIGINS", cors),
            ],
        )?);
        Client::new(format!("http://127.0.0.1:{port}"))
            .wait_for_ok("/readyz", None, WAIT)
            .await?;
    }
    stack.apis.extend(processes);
    let api = format!("http://127.0.0.1:{backend}");
    let browser = Browser::start().await?;
    let result = screenshot_on_failure(&browser, "cors", async {
        // Served by one origin, calling the backend on another: allowed.
        sign_up(
            &browser,
            &format!("{allowed_origin}/app/?api={api}"),
            "traveller",
        )
        .await?;
        open_new_bot(&browser, "Abroad", None).await?;

        // The same page from an origin the backend does not allow: the browser
        // blocks the calls.
        let page = format!("http://127.0.0.1:{other}/app/?api={api}");
        browser.client.goto(&page).await?;
        browser
            .fill("#auth-form input[name=username]", "traveller")
            .await?;
        browser
            .fill("#auth-form input[name=password]", "pass word")
            .await?;
        browser.click("#auth-form button[value=login]").await?;
        browser
            .until(WAIT, "the blocked call's error", || async {
                browser
                    .text("#auth-error")
                    .await
                    .is_some_and(|t| t.contains("Failed to fetch"))
            })
            .await?;
        anyhow::ensure!(
            browser.text("#who").await.unwrap_or_default().is_empty(),
            "signed in anyway"
        );
        Ok(())
    })
    .await;
    browser.close().await?;
    result?;
    stack.teardown().await
}

#[tokio::test]
async fn forgetting_from_the_page_empties_the_memory_view() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![("MEMORY_EVERY_MESSAGES".into(), "1".into())],
        ..Default::default()
    })
    .await?;
    let base = stack.client(0).base;
    let browser = Browser::start().await?;
    let result = screenshot_on_failure(&browser, "memory-forget", async {
        sign_up(&browser, &format!("{base}/app/"), "rememberer").await?;
        open_new_bot(&browser, "Keeper", None).await?;
        send(&browser, "my name is Ada and I like tea").await?;
        let (token, bot) = first_bot(&base, "rememberer").await?;
        let client = Client::new(base.clone());
        system_tests::eventually(Duration::from_secs(30), "a memory", || {
            let (client, token) = (client.clone(), token.clone());
            async move {
                let memory = client
                    .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&token))
                    .await?;
                Ok(memory.body["data"]["summary"].is_string().then_some(()))
            }
        })
        .await?;

        browser.click("#memory summary").await?;
        browser
            .until(WAIT, "the memory shown", || async {
                browser
                    .text("#memory-summary")
                    .await
                    .is_some_and(|t| t != "—" && !t.is_empty())
            })
            .await?;
        browser.click("#forget").await?;
        browser
            .until(WAIT, "the memory emptied", || async {
                browser.text("#memory-summary").await.as_deref() == Some("—")
            })
            .await?;
        let memory = client
            .get(&format!("/chat/memory?chatbot_id={bot}"), Some(&token))
            .await?;
        anyhow::ensure!(
            memory.body["data"]["summary"].is_null(),
            "{:?}",
            memory.body
        );
        Ok(())
    })
    .await;
    browser.close().await?;
    result?;
    stack.teardown().await
}

#[tokio::test]
async fn an_expired_token_is_refreshed_and_the_stream_reopened() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("WORKER_ROLES".into(), "replies".into()),
            // Access tokens (and the stream tickets made from them) last 3 s.
            ("ACCESS_TOKEN_TTL_SECS".into(), "3".into()),
        ],
        ..Default::default()
    })
    .await?;
    let base = stack.client(0).base;
    let browser = Browser::start().await?;
    let result = screenshot_on_failure(&browser, "token-refresh", async {
        sign_up(&browser, &format!("{base}/app/"), "lingerer").await?;
        open_new_bot(&browser, "Patient", None).await?;
        // The token, and the stream's ticket, run out; the stream ends.
        tokio::time::sleep(Duration::from_secs(6)).await;
        send(&browser, "still here after my token expired").await?;
        browser
            .until(WAIT, "the reply on a reopened stream", || async {
                replies(&browser)
                    .await
                    .iter()
                    .any(|r| r.ends_with("to: still here after my token expired"))
            })
            .await?;
        anyhow::ensure!(
            browser
                .text("#chat-error")
                .await
                .unwrap_or_default()
                .is_empty(),
            "the page showed an error"
        );
        Ok(())
    })
    .await;
    browser.close().await?;
    result?;
    stack.teardown().await
}

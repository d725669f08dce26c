//! A broker that accepts connections but never confirms (review item 5): the outbox
//! sweep must not hold row locks while it waits on the broker, or every append of
//! every process stalls behind it.

use std::time::{Duration, Instant};

use system_tests::{Stack, StackOptions};

#[tokio::test]
async fn appends_do_not_stall_while_the_broker_hangs() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        proxy_broker: true,
        workers: 0,
        ..Default::default()
    })
    .await?;
    let client = stack.client(0);
    let (_, token, bot) = client.user_with_bot("patient").await?;
    client.post_later(&token, bot, "before the hang").await?;

    // From now on the broker hears nothing and confirms nothing on the open
    // connections: publishes wait out their confirm timeout, and rows go overdue,
    // so the sweep claims them and tries to publish too.
    stack
        .broker_proxy
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no broker proxy"))?
        .freeze();
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut posted = 0;
    while Instant::now() < deadline {
        let started = Instant::now();
        client
            .post_later(&token, bot, &format!("during the hang {posted}"))
            .await?;
        slowest = slowest.max(started.elapsed());
        posted += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{posted} posts while the broker hung; slowest {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "an append stalled for {slowest:?} behind the outbox sweep"
    );
    let pool = stack.pool()?;
    let claimed_forever: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND claimed_until > NOW(6) + INTERVAL 120 SECOND",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(claimed_forever, 0, "claims expire");
    stack.teardown().await
}

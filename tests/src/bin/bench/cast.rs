//! The users the scenarios drive, signed up through the api: a reader with a
//! 50-message conversation (25 exchanges), and a writer with 64 bots to post to.

use system_tests::client::Client;

pub struct Cast {
    pub reader: String,
    /// The reader's conversation.
    pub talk: i64,
    pub writer: String,
    pub writer_bots: Vec<i64>,
}

impl Cast {
    pub async fn sign_up(client: &Client) -> anyhow::Result<Self> {
        let (_, reader, _) = client.signup("reader", "pass word").await?;
        let talk = client.create_bot(&reader, "talk", 1, "Li Bai").await?;
        for n in 0..25 {
            client.chat(&reader, talk, &format!("message {n}")).await?;
        }
        let (_, writer, _) = client.signup("writer", "pass word").await?;
        let mut writer_bots = Vec::new();
        for n in 0..64 {
            writer_bots.push(
                client
                    .create_bot(&writer, &format!("w{n}"), 1, "Li Bai")
                    .await?,
            );
        }
        Ok(Self {
            reader,
            talk,
            writer,
            writer_bots,
        })
    }
}

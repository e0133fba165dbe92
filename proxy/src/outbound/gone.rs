//! Dials that give up when their client does: a connection the client reset while the proxy was
//! still connecting upstream is abandoned, so nothing it sent reaches the destination later.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpStream;

/// How often a pending dial looks at its client. Dials normally end well before the first look.
const LOOK_EVERY: Duration = Duration::from_millis(25);

/// The client reset its connection before the dial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientGone;

/// Runs `dial` unless `client` is reset first: then `dial` is dropped (its connect abandoned)
/// and [`ClientGone`] returned. A client that only half-closed (FIN) still wants its answer and
/// keeps waiting, as TCP allows; the connect deadline bounds that wait.
pub(crate) async fn unless_client_resets<F: Future>(
    client: &TcpStream,
    dial: F,
) -> Result<F::Output, ClientGone> {
    tokio::select! {
        biased;
        done = dial => Ok(done),
        () = reset(client) => Err(ClientGone),
    }
}

/// Resolves once `client` carries a pending error (ECONNRESET and the like).
async fn reset(client: &TcpStream) {
    let mut look = tokio::time::interval_at(tokio::time::Instant::now() + LOOK_EVERY, LOOK_EVERY);
    loop {
        look.tick().await;
        match client.take_error() {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return,
        }
    }
}

/// Whether the client reset its connection already: checked once more before the first byte
/// goes upstream, since a reset can land between two looks.
pub(crate) fn was_reset(client: &TcpStream) -> bool {
    !matches!(client.take_error(), Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_reset_client_abandons_the_dial() {
        let (client, server) = pair().await;
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        let never = std::future::pending::<()>();
        let outcome =
            tokio::time::timeout(Duration::from_secs(5), unless_client_resets(&server, never))
                .await
                .expect("the reset is seen");
        assert_eq!(outcome, Err(ClientGone));
    }

    #[tokio::test]
    async fn a_half_closed_client_keeps_its_dial() {
        let (client, server) = pair().await;
        let mut client = client;
        tokio::io::AsyncWriteExt::shutdown(&mut client)
            .await
            .unwrap();
        let dial = async {
            tokio::time::sleep(LOOK_EVERY * 4).await;
            7
        };
        assert_eq!(unless_client_resets(&server, dial).await, Ok(7));
        assert!(!was_reset(&server));
        drop(client);
    }
}

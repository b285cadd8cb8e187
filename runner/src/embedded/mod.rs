//! In-process DynamoDB-compatible (dynoxide) and S3-compatible (s3s-fs)
//! servers on loopback, reached through the ordinary AWS SDK clients.

mod s3_rules;

use std::net::SocketAddr;
use std::path::Path;

/// Access key the embedded S3 server accepts (local only).
pub const LOCAL_ACCESS_KEY: &str = "bulkexportlocal";
/// Secret key the embedded S3 server accepts (local only).
pub const LOCAL_SECRET_KEY: &str = "bulkexportlocalsecret";

/// Errors starting an embedded server.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// Could not bind or create files.
    #[error("embedded server: {0}")]
    Start(String),
}

/// Starts dynoxide on an ephemeral loopback port, persisted to `sqlite_path`
/// (or in memory when `None`). Returns its endpoint URL.
pub async fn start_dynamodb(sqlite_path: Option<&Path>) -> Result<String, EmbeddedError> {
    let db = match sqlite_path {
        Some(p) => {
            let p = p
                .to_str()
                .ok_or_else(|| EmbeddedError::Start("data path is not UTF-8".into()))?;
            dynoxide::Database::new(p)
                .map_err(|e| EmbeddedError::Start(format!("dynoxide: {e}")))?
        }
        None => dynoxide::Database::memory()
            .map_err(|e| EmbeddedError::Start(format!("dynoxide: {e}")))?,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    let addr: SocketAddr = listener
        .local_addr()
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) =
            dynoxide::server::serve_with_shutdown(listener, db, std::future::pending()).await
        {
            tracing::error!(error = %e, "embedded DynamoDB stopped");
        }
    });
    Ok(format!("http://{addr}"))
}

/// Starts s3s-fs over `root` on an ephemeral loopback port, with SigV4 auth
/// (so presigned URLs are really verified) and S3's multipart completion
/// rules (see `s3_rules`). Returns its endpoint URL.
pub async fn start_s3(root: &Path) -> Result<String, EmbeddedError> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;

    std::fs::create_dir_all(root).map_err(|e| EmbeddedError::Start(e.to_string()))?;
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|e| EmbeddedError::Start(format!("s3s-fs: {e:?}")))?;
    let mut builder =
        s3s::service::S3ServiceBuilder::new(s3_rules::S3Rules::new(fs, root.to_path_buf()));
    builder.set_auth(s3s::auth::SimpleAuth::from_single(
        LOCAL_ACCESS_KEY,
        LOCAL_SECRET_KEY,
    ));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

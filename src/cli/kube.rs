//! The Kubernetes client of the commands that need one.

use anyhow::Context as _;
use hyper_timeout::TimeoutConnector;
use hyper_util::{
    client::legacy::{self, connect::HttpConnector},
    rt::TokioExecutor,
};
use kube::{
    Client,
    client::{ClientBuilder, ConfigExt as _, retry::RetryPolicy},
    config::{KubeConfigOptions, Kubeconfig},
};
use tower::{BoxError, ServiceBuilder, retry::RetryLayer};

use crate::kube_requests::CountRequests;

/// The largest read buffer of one connection to the API server: 16 KiB, one TLS record's plaintext.
///
/// kube's client speaks HTTP/1 only, so each watch holds a connection of its own, and hyper grows that
/// connection's read buffer towards ~400 KiB while a large list page streams in, then keeps it for the
/// connection's life. Measured with heaptrack at the benchmark's default size (54 watches), those buffers were
/// the largest share of the heap (14.3 MB of 37.9 MB), and their number grows with the namespaces watched. Capped,
/// the benchmark's peak RSS fell from 59.0 to 49.5 MiB for about 0.3 s more CPU over the initial lists
/// (tests/bench/RESULTS.md). The cap also bounds a response's head, which the API server keeps far smaller.
pub const MAX_READ_BUFFER: usize = 16 * 1024;

/// A client from `--kubeconfig`, else `KUBECONFIG`, else the in-cluster service account; its requests are
/// counted and timed in `clb_operator_kube_requests` and `clb_operator_kube_request_duration_seconds`.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await.context("no kubeconfig and not in a cluster")?,
    };
    build(config).context("building the Kubernetes client")
}

/// kube's default HTTP stack, less its request tracing (our [`CountRequests`] layer measures requests), with the
/// read buffer capped at [`MAX_READ_BUFFER`]. kube's builder has no way to set hyper's buffer size, hence the
/// stack is assembled here from the same parts, in the same order. A kubeconfig with a proxy falls back to kube's
/// own builder, which knows the proxy protocols; only the buffer cap is lost there. Also left out: the expiry of an
/// exec plugin's client certificate, which kube's builder records on the client and nothing here reads.
fn build(config: kube::Config) -> Result<Client, kube::Error> {
    if config.proxy_url.is_some() {
        return Ok(ClientBuilder::try_from(config)?.with_layer(&CountRequests).build());
    }
    // As kube does: use the process's crypto provider if one is installed, else aws-lc. The only error is that
    // another thread installed one in between, which is as good.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut connector = TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http: legacy::Client<_, kube::client::Body> =
        legacy::Builder::new(TokioExecutor::new()).http1_max_buf_size(MAX_READ_BUFFER).build(connector);
    let service = ServiceBuilder::new()
        .layer(CountRequests)
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serves one HTTP/1.1 response on 127.0.0.1 whose head carries `padding` bytes of header, and returns the
    /// server's configuration.
    async fn serve_head_of(padding: usize) -> kube::Config {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if conn.read(&mut byte).await.unwrap() == 0 {
                    return;
                }
                request.push(byte[0]);
            }
            let body = r#"{"major":"1","minor":"34","gitVersion":"v1.34.0","gitCommit":"","gitTreeState":"","buildDate":"","goVersion":"","compiler":"","platform":""}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: {}\r\nContent-Length: {}\r\n\r\n",
                "p".repeat(padding),
                body.len()
            );
            let _ = conn.write_all(format!("{head}{body}").as_bytes()).await;
        });
        kube::Config::new(url.parse().unwrap())
    }

    #[tokio::test]
    async fn the_client_reads_with_a_buffer_capped_at_max_read_buffer() {
        // A head that fits the buffer is read; one larger than the cap (but far below hyper's default of
        // ~400 KiB) is refused, which shows the stack was built with the cap.
        let fits = build(serve_head_of(MAX_READ_BUFFER / 2).await).unwrap();
        assert_eq!(fits.apiserver_version().await.unwrap().minor, "34");
        let too_large = build(serve_head_of(MAX_READ_BUFFER * 2).await).unwrap();
        let err = too_large.apiserver_version().await.unwrap_err();
        assert!(format!("{err:?}").contains("TooLarge"), "{err:?}");
        // kube's own stack reads the same head.
        let kubes = ClientBuilder::try_from(serve_head_of(MAX_READ_BUFFER * 2).await).unwrap().build();
        assert_eq!(kubes.apiserver_version().await.unwrap().minor, "34");
    }
}

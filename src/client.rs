//! Connecting, as both binaries do: the kubeconfig rules kubectl users expect, and Apis scoped
//! to a namespace or to the whole cluster.

use std::path::{Path, PathBuf};

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Config, Resource};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading kubeconfig {}: {source}", path.display())]
    Read { path: PathBuf, source: KubeconfigError },
    #[error("reading kubeconfig ($KUBECONFIG or ~/.kube/config): {0}")]
    ReadDefault(#[source] KubeconfigError),
    #[error("loading kubeconfig: {0}")]
    Load(#[source] KubeconfigError),
    #[error("no kubeconfig ($KUBECONFIG or ~/.kube/config) and not in a cluster: {0}")]
    Infer(#[source] InferConfigError),
}

/// The client configuration from `kubeconfig` (else $KUBECONFIG, then ~/.kube/config) and its
/// `context` (else the current one); with neither given and no kubeconfig file, the in-cluster
/// ServiceAccount.
pub async fn config(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Config, ConfigError> {
    let file = match kubeconfig {
        Some(path) => Kubeconfig::read_from(path).map_err(|source| ConfigError::Read { path: path.into(), source })?,
        None if context.is_some() => Kubeconfig::read().map_err(ConfigError::ReadDefault)?,
        None => return Config::infer().await.map_err(ConfigError::Infer),
    };
    let options = KubeConfigOptions { context: context.map(str::to_owned), ..KubeConfigOptions::default() };
    Config::from_custom_kubeconfig(file, &options).await.map_err(ConfigError::Load)
}

/// A client as kube builds one from `config` (TLS, timeouts, retries of the API server's
/// 429 and 503, credentials, extra headers), but with TCP_NODELAY on its connections. Without
/// it a request a connection writes in two parts (a new connection's TLS handshake end, then
/// the request) waits for the first part's acknowledgement, which Linux delays up to 40 ms:
/// seen as 40 and 80 ms stalls of `kubectl agent rollback`'s watches, a third of its runs.
pub fn client(config: Config) -> Result<Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let mut connector = hyper_timeout::TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace))
}

/// An Api over one namespace, or over all of them.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

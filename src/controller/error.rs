//! Typed reconcile errors, each with a fixed `kind` for logs and metrics.

use std::time::Duration;

use crate::clb::ClbError;

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API call failed while {context}: {source}")]
    Kube {
        /// What the operator was doing.
        context: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A CLB call failed in a way the status cannot absorb.
    #[error("CLB call failed while {context}: {source}")]
    Clb {
        /// What the operator was doing.
        context: &'static str,
        /// The CLB error (never carries secrets).
        #[source]
        source: ClbError,
    },
    /// The binding is being deleted and must wait (for running tasks, or for a problem to clear) before its
    /// finalizer may go; the reconcile is retried after the given delay.
    #[error("deletion waits: {reason}")]
    DeletionPending {
        /// What it waits for.
        reason: String,
        /// When to look again.
        retry_after: Duration,
    },
    /// The caches went away before they synced, so the operator is shutting down.
    #[error("the node and pod caches are gone")]
    CacheClosed,
    /// The pod cache has not finished listing the binding's namespace (new to it) in time; retried.
    #[error("the pod cache is still listing namespace {namespace}")]
    PodCacheListing {
        /// The binding's namespace.
        namespace: String,
    },
    /// The object is missing something the API server guarantees (a name or namespace).
    #[error("malformed object: {0}")]
    Malformed(&'static str),
    /// The finalizer helper failed (adding/removing the finalizer, or the cleanup).
    // NB: boxed because kube's finalizer::Error embeds this type.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short, fixed label for the error (metrics and log fields never carry free text).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::Clb { source, .. } => source.kind(),
            Self::DeletionPending { .. } => "deletion_pending",
            Self::Malformed(_) => "malformed",
            Self::CacheClosed => "cache_closed",
            Self::PodCacheListing { .. } => "pod_cache_listing",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
        }
    }

    /// The delay the error itself asks for, if any (a pending deletion knows when to look again).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::DeletionPending { retry_after, .. } => Some(*retry_after),
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.retry_after(),
                _ => None,
            },
            _ => None,
        }
    }

    /// Shorthand for a Kubernetes error with context.
    pub fn kube(context: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kube { context, source }
    }
}

/// Result of reconcile steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;

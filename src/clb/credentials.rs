//! CLB API credentials (SecretId, SecretKey, optional session Token) whose secret parts never show in `Debug`.

use std::fmt;
use std::str::FromStr;

use crate::clb::ClbError;

/// Environment variable with the SecretId.
pub const ENV_SECRET_ID: &str = "TENCENTCLOUD_SECRET_ID";
/// Environment variable with the SecretKey.
pub const ENV_SECRET_KEY: &str = "TENCENTCLOUD_SECRET_KEY";
/// Environment variable with the optional session token of temporary credentials.
pub const ENV_SESSION_TOKEN: &str = "TENCENTCLOUD_SESSION_TOKEN";

/// A string that must never be printed: `Debug` and `Display` show `<redacted>`; read it with [`expose`].
///
/// [`expose`]: SecretString::expose
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Parses a secret from text (a flag or an environment variable of the command line).
impl FromStr for SecretString {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A SecretId with its SecretKey and, for temporary credentials, a session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    secret_id: String,
    secret_key: SecretString,
    token: Option<SecretString>,
}

impl Credentials {
    /// Credentials from their parts; an empty token counts as none.
    pub fn new(secret_id: impl Into<String>, secret_key: impl Into<String>, token: Option<String>) -> Self {
        Self {
            secret_id: secret_id.into(),
            secret_key: SecretString::new(secret_key),
            token: token.filter(|t| !t.is_empty()).map(SecretString::new),
        }
    }

    /// Reads `TENCENTCLOUD_SECRET_ID`, `TENCENTCLOUD_SECRET_KEY` and the optional `TENCENTCLOUD_SESSION_TOKEN`.
    pub fn from_env() -> Result<Self, ClbError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let secret_id =
            var(ENV_SECRET_ID).ok_or_else(|| ClbError::Config(format!("{ENV_SECRET_ID} is not set")))?;
        let secret_key =
            var(ENV_SECRET_KEY).ok_or_else(|| ClbError::Config(format!("{ENV_SECRET_KEY} is not set")))?;
        Ok(Self::new(secret_id, secret_key, var(ENV_SESSION_TOKEN)))
    }

    /// The SecretId (an identifier, not a secret).
    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    /// The SecretKey, for signing only.
    pub fn secret_key(&self) -> &str {
        self.secret_key.expose()
    }

    /// The session token, if these are temporary credentials; it is sent as the signed `Token` parameter.
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(SecretString::expose)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &self.secret_key)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Debug` shows the SecretId but neither the key nor the token.
    #[test]
    fn debug_redacts_key_and_token() {
        let creds = Credentials::new("AKIDx", "very-secret-key", Some("very-secret-token".into()));
        let shown = format!("{creds:?} {:?}", creds.secret_key);
        assert!(shown.contains("AKIDx"));
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(creds.token(), Some("very-secret-token"));
    }

    /// An empty token is no token (an empty env var must not add a `Token=` parameter).
    #[test]
    fn empty_token_is_none() {
        assert_eq!(Credentials::new("a", "b", Some(String::new())).token(), None);
    }
}

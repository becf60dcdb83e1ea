//! Who is calling: the session cookie verified, not revoked, and not sent by another site's page.

use std::sync::Arc;

use common::{ApiError, AuthFailure, Claims, SessionCookie, TokenError, TokenKeys};
use warp::http::Method;
use warp::http::header::{HOST, HeaderMap, HeaderName, ORIGIN};

use crate::revocation::RevocationStore;

const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

#[derive(Debug)]
pub struct Auth {
    pub keys: TokenKeys,
    pub cookie: SessionCookie,
    pub revocations: Arc<dyn RevocationStore>,
    /// Origins, besides the gateway's own, allowed to send unsafe requests with the cookie.
    pub allowed_origins: Vec<String>,
}

impl Auth {
    /// The verified claims of the request's session cookie.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Claims, AuthFailure> {
        let mut values = self.cookie.values(headers);
        let token = values.next().ok_or(AuthFailure::Missing)?;
        // Two different session cookies (one planted by a sibling domain, say): refuse rather
        // than authenticate with one and forward the other.
        if values.any(|other| other != token) {
            return Err(AuthFailure::Invalid);
        }
        let claims = self.keys.verify(token).map_err(|error| match error {
            TokenError::Expired => AuthFailure::Expired,
            TokenError::Invalid => AuthFailure::Invalid,
        })?;
        if self.revocations.is_revoked(&claims.jti, claims.iat) {
            return Err(AuthFailure::Revoked);
        }
        Ok(claims)
    }

    /// Ends this token's life now, on the server, not only in the browser.
    pub fn revoke(&self, claims: &Claims) {
        let until = claims
            .exp
            .saturating_add(self.keys.policy().leeway.as_secs());
        self.revocations.revoke(&claims.jti, until);
    }

    /// Defence in depth against cross-site request forgery, on top of `SameSite=Strict`: an
    /// unsafe method that carries the session cookie must not come from another site's page.
    /// Clients that send neither `Origin` nor `Sec-Fetch-Site` (curl, Postman) are not browsers
    /// acting for someone else, and pass.
    pub fn check_same_origin(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        if method.is_safe() || self.cookie.values(headers).next().is_none() {
            return Ok(());
        }
        if headers
            .get(SEC_FETCH_SITE)
            .is_some_and(|site| site == "cross-site")
        {
            return Err(ApiError::CrossSiteRequest);
        }
        let Some(origin) = headers.get(ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().map_err(|_| ApiError::CrossSiteRequest)?;
        let same_host = origin
            .split_once("://")
            .map(|(_, authority)| authority)
            .zip(headers.get(HOST).and_then(|host| host.to_str().ok()))
            .is_some_and(|(authority, host)| authority.eq_ignore_ascii_case(host));
        let allowed = self
            .allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin));
        if same_host || allowed {
            Ok(())
        } else {
            Err(ApiError::CrossSiteRequest)
        }
    }
}

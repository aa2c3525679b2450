//! Users, organizations and access tokens.

use super::{next, random_hex, AccessToken, Account, AccountKind, Id, State};

/// Scope words Forgejo accepts (contract §1.2).
const SCOPE_CATEGORIES: &[&str] = &[
    "activitypub",
    "admin",
    "misc",
    "notification",
    "organization",
    "package",
    "issue",
    "repository",
    "user",
];

/// Normalizes token scopes: `Ok(list)` or the 400 message Forgejo gives.
pub fn normalize_scopes(scopes: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for raw in scopes.iter().flat_map(|s| s.split(',')) {
        let scope = raw.trim();
        if scope.is_empty() {
            continue;
        }
        let valid = scope == "all"
            || scope == "public-only"
            || scope.split_once(':').is_some_and(|(level, cat)| {
                matches!(level, "read" | "write") && SCOPE_CATEGORIES.contains(&cat)
            });
        if !valid {
            return Err(format!(
                "invalid access token scope provided: invalid access token scope: {scope}"
            ));
        }
        if !out.iter().any(|s| s == scope) {
            out.push(scope.to_owned());
        }
    }
    if out.is_empty() {
        return Err("access token must have a scope".into());
    }
    Ok(out)
}

impl State {
    pub fn account_by_name(&self, name: &str) -> Option<&Account> {
        self.account_by_name
            .get(&name.to_lowercase())
            .and_then(|id| self.accounts.get(id))
    }

    pub fn account(&self, id: Id) -> Option<&Account> {
        self.accounts.get(&id)
    }

    /// Creates a user; `Err` with Forgejo's message if the name is taken.
    pub fn create_user(
        &mut self,
        name: &str,
        password: &str,
        email: &str,
        is_admin: bool,
        now_ms: i64,
    ) -> Result<Id, String> {
        self.create_account(
            name,
            AccountKind::User,
            Some(password),
            email,
            is_admin,
            None,
            now_ms,
        )
    }

    pub fn create_org(
        &mut self,
        name: &str,
        creator: Id,
        full_name: &str,
        description: &str,
        now_ms: i64,
    ) -> Result<Id, String> {
        let id = self.create_account(
            name,
            AccountKind::Org,
            None,
            "",
            false,
            Some(creator),
            now_ms,
        )?;
        if let Some(org) = self.accounts.get_mut(&id) {
            org.full_name = full_name.to_owned();
            org.description = description.to_owned();
        }
        Ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    fn create_account(
        &mut self,
        name: &str,
        kind: AccountKind,
        password: Option<&str>,
        email: &str,
        is_admin: bool,
        owner: Option<Id>,
        now_ms: i64,
    ) -> Result<Id, String> {
        let key = name.to_lowercase();
        if name.is_empty() || self.account_by_name.contains_key(&key) {
            return Err(format!("user already exists [name: {name}]"));
        }
        let id = next(&mut self.ids.account);
        let password_hash = password.map(|p| self.hash_secret(p));
        self.accounts.insert(
            id,
            Account {
                id,
                name: name.to_owned(),
                kind,
                email: if email.is_empty() {
                    format!("{key}@noreply.localhost")
                } else {
                    email.to_owned()
                },
                full_name: String::new(),
                description: String::new(),
                password_hash,
                is_admin,
                org_owners: owner.into_iter().collect(),
                created_ms: now_ms,
            },
        );
        self.account_by_name.insert(key, id);
        Ok(id)
    }

    /// Checks a user's password (basic auth).
    pub fn check_password(&self, name: &str, password: &str) -> Option<Id> {
        let account = self.account_by_name(name)?;
        let expected = account.password_hash.as_ref()?;
        (account.kind == AccountKind::User && *expected == self.hash_secret(password))
            .then_some(account.id)
    }

    pub fn is_admin(&self, user_id: Id) -> bool {
        self.accounts.get(&user_id).is_some_and(|a| a.is_admin)
    }

    /// Owner of an account: the user itself, an org owner, or a site admin.
    pub fn can_own(&self, user_id: Id, account_id: Id) -> bool {
        if user_id == account_id || self.is_admin(user_id) {
            return true;
        }
        self.accounts
            .get(&account_id)
            .is_some_and(|a| a.kind == AccountKind::Org && a.org_owners.contains(&user_id))
    }

    /// Creates an access token; returns it and its secret (shown once).
    pub fn create_access_token(
        &mut self,
        user_id: Id,
        name: &str,
        scopes: Vec<String>,
    ) -> Result<(AccessToken, String), String> {
        if self
            .tokens
            .values()
            .any(|t| t.user_id == user_id && t.name == name)
        {
            return Err("access token name has been used already".into());
        }
        let secret = random_hex(20);
        let id = next(&mut self.ids.token);
        let token = AccessToken {
            id,
            user_id,
            name: name.to_owned(),
            hash: self.hash_secret(&secret),
            last_eight: secret[secret.len() - 8..].to_owned(),
            scopes,
        };
        self.token_by_hash.insert(token.hash.clone(), id);
        self.tokens.insert(id, token.clone());
        Ok((token, secret))
    }

    pub fn find_access_token(&self, secret: &str) -> Option<&AccessToken> {
        self.token_by_hash
            .get(&self.hash_secret(secret))
            .and_then(|id| self.tokens.get(id))
    }

    pub fn delete_access_token(&mut self, user_id: Id, id_or_name: &str) -> bool {
        let found = self
            .tokens
            .values()
            .find(|t| {
                t.user_id == user_id && (t.id.to_string() == id_or_name || t.name == id_or_name)
            })
            .map(|t| (t.id, t.hash.clone()));
        match found {
            Some((id, hash)) => {
                self.tokens.remove(&id);
                self.token_by_hash.remove(&hash);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_scopes;

    #[test]
    fn scopes() {
        assert_eq!(
            normalize_scopes(&["read:repository".into()]).unwrap(),
            vec!["read:repository"]
        );
        assert!(normalize_scopes(&[]).is_err());
        assert!(normalize_scopes(&["read:bogus".into()]).is_err());
        assert_eq!(
            normalize_scopes(&["all,read:user".into()]).unwrap().len(),
            2
        );
    }
}

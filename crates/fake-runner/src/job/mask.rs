//! Hides secret values in log rows, as forgejo-runner's reporter does (`***`).

/// Replacement text for a secret.
pub const MASK: &str = "***";

#[derive(Debug, Default, Clone)]
pub struct Masker {
    /// Longest first, so a secret containing another is masked whole.
    secrets: Vec<String>,
}

impl Masker {
    /// Adds a secret; a multi-line value is also masked line by line, since output is logged
    /// one line at a time.
    pub fn add(&mut self, secret: &str) {
        let mut candidates = vec![secret.to_string()];
        if secret.contains('\n') {
            candidates.extend(secret.lines().map(|l| l.trim().to_string()));
        }
        for candidate in candidates {
            if !candidate.trim().is_empty() && !self.secrets.contains(&candidate) {
                self.secrets.push(candidate);
            }
        }
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    pub fn mask(&self, line: &str) -> String {
        let mut out = line.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_whole_values_and_lines_of_multiline_secrets() {
        let mut m = Masker::default();
        m.add("s3cret");
        m.add("s3cret-longer");
        m.add("line one\nline two");
        m.add("");
        assert_eq!(m.mask("a s3cret-longer b s3cret"), "a *** b ***");
        assert_eq!(m.mask("got: line two"), "got: ***");
        assert_eq!(m.mask("nothing here"), "nothing here");
    }
}

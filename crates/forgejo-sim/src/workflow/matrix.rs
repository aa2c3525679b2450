//! `strategy.matrix` to the list of combinations, one job each, following act's
//! `Job.GetMatrixes` (forgejo/runner `act/model/workflow.go`) and the ordering and naming of
//! `act/jobparser/jobparser.go` (`getMatrixes` sorts by `matrixName`; `nameWithMatrix`).
//!
//! Rules reproduced from that code:
//! * The matrix must be a mapping whose every value is a list; otherwise Go's decoder fails and the
//!   job runs once with an empty matrix (no error).
//! * `include` entries sharing a key with the matrix are merged into every combination whose
//!   original dimensions agree with them; when none agrees, or when they share no key, they are
//!   added as new combinations.
//! * An `exclude` key that is not a matrix key is an error ("the workflow is not valid").
//! * A dimension with an empty list yields no combination (then only extra includes remain).
//! * Combinations are sorted by their display string `(v1, v2)` (values in key order).
//!
//! Forgejo itself sets no upper bound; we reject more than [`MAX_MATRIX_COMBINATIONS`] (GitHub's
//! documented limit of 256 jobs per matrix) before building anything, so hostile input cannot make
//! the simulator allocate without bound.

use std::collections::{BTreeMap, HashSet};

use serde_norway::{Mapping, Value};

use super::value::{go_sprint, key_string, untagged};

/// Upper bound of combinations per matrix job.
pub const MAX_MATRIX_COMBINATIONS: usize = 256;

/// One combination: dimension name to value.
pub type Combination = BTreeMap<String, Value>;

/// Expands an (already evaluated) `strategy.matrix` node.
pub fn expand(matrix: Option<&Value>) -> Result<Vec<Combination>, String> {
    let Some(Value::Mapping(map)) = matrix.map(untagged) else {
        return Ok(vec![Combination::new()]);
    };
    if map
        .values()
        .any(|v| !matches!(untagged(v), Value::Sequence(_)))
    {
        return Ok(vec![Combination::new()]);
    }
    let mut all_keys = HashSet::new();
    let mut dimensions: Vec<(String, &Vec<Value>)> = Vec::new();
    let mut include_list: &[Value] = &[];
    let mut exclude_list: &[Value] = &[];
    for (key, value) in map {
        let Some(key) = key_string(key) else {
            return Ok(vec![Combination::new()]);
        };
        let Value::Sequence(items) = untagged(value) else {
            continue;
        };
        all_keys.insert(key.clone());
        match key.as_str() {
            "include" => include_list = items,
            "exclude" => exclude_list = items,
            _ => dimensions.push((key, items)),
        }
    }

    let mut includes = Vec::new();
    let mut extra_includes = Vec::new();
    for entry in flatten_entries(include_list, "include")? {
        if entry.keys().any(|k| all_keys.contains(k)) {
            includes.push(entry);
        } else {
            extra_includes.push(entry);
        }
    }
    all_keys.remove("include");

    let excludes = flatten_entries(exclude_list, "exclude")?;
    for exclude in &excludes {
        if let Some(key) = exclude.keys().find(|k| !all_keys.contains(*k)) {
            return Err(format!(
                "the workflow is not valid: matrix exclude key {key:?} does not match any key within the matrix"
            ));
        }
    }

    let size = dimensions
        .iter()
        .try_fold(1usize, |acc, (_, items)| acc.checked_mul(items.len()))
        .filter(|n| *n <= MAX_MATRIX_COMBINATIONS)
        .ok_or_else(too_many)?;
    let mut combinations = if dimensions.is_empty() {
        Vec::new()
    } else {
        product(&dimensions, size)
    };
    combinations.retain(|c| !excludes.iter().any(|e| common_keys_match(c, e)));

    let dimension_names: HashSet<&str> = dimensions.iter().map(|(k, _)| k.as_str()).collect();
    for include in includes {
        let mut matched = false;
        for combination in combinations.iter_mut() {
            let agrees = combination.iter().all(|(k, v)| {
                !dimension_names.contains(k.as_str()) || include.get(k).is_none_or(|iv| iv == v)
            });
            if agrees {
                matched = true;
                combination.extend(include.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        if !matched {
            extra_includes.push(include);
        }
    }
    combinations.extend(extra_includes);
    if combinations.len() > MAX_MATRIX_COMBINATIONS {
        return Err(too_many());
    }
    combinations.sort_by_cached_key(matrix_name);
    Ok(combinations)
}

fn too_many() -> String {
    format!("the matrix has more than {MAX_MATRIX_COMBINATIONS} combinations")
}

/// `include`/`exclude` entries: mappings, or lists of mappings.
fn flatten_entries(items: &[Value], what: &str) -> Result<Vec<Combination>, String> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match untagged(item) {
            Value::Mapping(map) => out.push(to_combination(map)),
            Value::Sequence(inner) => {
                for nested in inner {
                    let Value::Mapping(map) = untagged(nested) else {
                        return Err(format!(
                            "matrix {what}[{i}] holds an entry that is not a mapping"
                        ));
                    };
                    out.push(to_combination(map));
                }
            }
            _ => return Err(format!("matrix {what}[{i}] is not a mapping")),
        }
    }
    Ok(out)
}

fn to_combination(map: &Mapping) -> Combination {
    map.iter()
        .filter_map(|(k, v)| Some((key_string(k)?, untagged(v).clone())))
        .collect()
}

/// Cartesian product, the last dimension varying fastest (as act's `cartN`).
fn product(dimensions: &[(String, &Vec<Value>)], size: usize) -> Vec<Combination> {
    let mut out = Vec::with_capacity(size);
    let mut indexes = vec![0usize; dimensions.len()];
    for _ in 0..size {
        out.push(
            dimensions
                .iter()
                .zip(&indexes)
                .map(|((k, items), &i)| (k.clone(), untagged(&items[i]).clone()))
                .collect(),
        );
        for j in (0..dimensions.len()).rev() {
            indexes[j] += 1;
            if indexes[j] < dimensions[j].1.len() {
                break;
            }
            indexes[j] = 0;
        }
    }
    out
}

/// act's `commonKeysMatch`: every key of the combination that the exclude names has that value.
fn common_keys_match(combination: &Combination, exclude: &Combination) -> bool {
    combination
        .iter()
        .all(|(k, v)| exclude.get(k).is_none_or(|ev| ev == v))
}

/// `(v1, v2)`: the values in dimension-name order, rendered like Go's `fmt.Sprint`.
pub fn matrix_name(combination: &Combination) -> String {
    let values: Vec<String> = combination.values().map(go_sprint).collect();
    format!("({})", values.join(", "))
}

/// Forgejo's default display name of a matrix job: `key (v1, v2)`, or just `key` without matrix.
pub fn name_with_matrix(name: &str, combination: &Combination) -> String {
    if combination.is_empty() {
        name.to_string()
    } else {
        format!("{name} {}", matrix_name(combination))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Result<Vec<String>, String> {
        let v: Value = serde_norway::from_str(text).unwrap();
        expand(Some(&v)).map(|cs| cs.iter().map(matrix_name).collect())
    }

    #[test]
    fn product_is_sorted_by_display_name() {
        assert_eq!(
            names("{b: [2, 1], a: [y, x]}").unwrap(),
            vec!["(x, 1)", "(x, 2)", "(y, 1)", "(y, 2)"]
        );
    }

    #[test]
    fn include_merges_when_dimensions_agree_and_adds_otherwise() {
        let got =
            names("{os: [linux, mac], include: [{os: linux, extra: yes}, {os: bsd}, {other: 1}]}")
                .unwrap();
        // {os: linux, extra: yes} merges into linux; bsd and {other: 1} are new combinations.
        assert_eq!(got, vec!["(1)", "(bsd)", "(mac)", "(yes, linux)"]);
    }

    #[test]
    fn exclude_removes_matching_and_rejects_unknown_keys() {
        assert_eq!(
            names("{a: [1, 2], b: [x, y], exclude: [{a: 1, b: y}]}").unwrap(),
            vec!["(1, x)", "(2, x)", "(2, y)"]
        );
        let err = names("{a: [1], exclude: [{c: 1}]}").unwrap_err();
        assert!(err.contains("\"c\""), "{err}");
    }

    #[test]
    fn not_a_mapping_of_lists_means_one_plain_job() {
        assert_eq!(names("{os: linux}").unwrap(), vec!["()"]);
        assert_eq!(names("[a]").unwrap(), vec!["()"]);
        assert!(names("{os: []}").unwrap().is_empty());
        assert_eq!(names("{include: [{a: 1}]}").unwrap(), vec!["(1)"]);
    }

    #[test]
    fn oversized_matrix_is_rejected_before_expansion() {
        let dims: Vec<String> = (0..20).map(|i| format!("d{i}: [a, b, c, d]")).collect();
        let err = names(&format!("{{{}}}", dims.join(", "))).unwrap_err();
        assert!(err.contains("256"), "{err}");
        assert_eq!(names("{a: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16], b: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}").unwrap().len(), 256);
        assert!(names("{a: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16], b: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16], include: [{c: 1}]}").is_err());
    }
}

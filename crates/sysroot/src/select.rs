//! Naming a deployment on the command line and over D-Bus: its index in the boot
//! order, a prefix of its commit id, or `staged`.

use anyhow::{Result, bail};

use super::{Deployment, Sysroot};

/// The word that names the staged deployment.
pub const STAGED: &str = "staged";

/// Picks a deployment by its boot-order index, a prefix of its commit id, or `staged`.
pub fn select_deployment(sysroot: &Sysroot, which: &str) -> Result<Deployment> {
    if which == STAGED {
        return match sysroot.staged()? {
            Some(d) => Ok(d),
            None => bail!("no deployment is staged"),
        };
    }
    let all = sysroot.deployments()?;
    let commits: Vec<String> = all.iter().map(|d| d.commit.to_hex()).collect();
    Ok(all[pick(&commits, which)?].clone())
}

/// The position in `commits` (hex ids in boot order) that `which` names: an index of
/// the list, or else a prefix of one commit (4 hex digits or more). A prefix can be
/// all decimal digits (`598763882682`), so a number is an index only when it is one.
fn pick(commits: &[String], which: &str) -> Result<usize> {
    let index = which.parse::<usize>().ok();
    if let Some(i) = index.filter(|i| *i < commits.len()) {
        return Ok(i);
    }
    let hits: Vec<usize> = (0..commits.len())
        .filter(|i| which.len() >= 4 && commits[*i].starts_with(which))
        .collect();
    match (hits.as_slice(), index) {
        ([i], _) => Ok(*i),
        ([], Some(i)) => bail!(
            "there is no deployment {i} (status lists {}), and no commit starts with '{which}'",
            commits.len()
        ),
        ([], None) => bail!(
            "no deployment is at a commit starting with '{which}' (give 4 hex digits or more, or an index)"
        ),
        _ => bail!("'{which}' names several deployments; give their index instead"),
    }
}

/// The deployment a command means without naming one: the booted one, else the
/// default (index 0).
pub fn current(sysroot: &Sysroot) -> Result<Deployment> {
    let all = sysroot.deployments()?;
    match all.iter().find(|d| d.booted).or(all.first()) {
        Some(d) => Ok(d.clone()),
        None => bail!("there is no deployment yet ('arbor deploy' makes one)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_is_named_by_index_or_by_a_commit_prefix_even_an_all_digit_one() {
        let commits = vec!["598763882682aa".to_string(), "abcdef012345bb".to_string()];
        assert_eq!(pick(&commits, "1").unwrap(), 1);
        assert_eq!(pick(&commits, "abcd").unwrap(), 1);
        // All digits, but no index that large: the commit it starts.
        assert_eq!(pick(&commits, "598763882682").unwrap(), 0);
        let e = pick(&commits, "7").unwrap_err().to_string();
        assert!(e.contains("no deployment 7 (status lists 2)"), "{e}");
        let e = pick(&commits, "ffff").unwrap_err().to_string();
        assert!(
            e.contains("no deployment is at a commit starting with 'ffff'"),
            "{e}"
        );
        let both = vec!["abcd01".to_string(), "abcd02".to_string()];
        assert!(
            pick(&both, "abcd")
                .unwrap_err()
                .to_string()
                .contains("several")
        );
    }
}

//! POSIX ACL inheritance done by hand, for the one case where the filesystem cannot do it: an
//! object built in the work directory (to replace a whiteout atomically) has no parent default
//! ACL to inherit from there, so it gets the access ACL (and, for a directory, the default ACL)
//! its real parent would have given it, computed as the kernel's `posix_acl_create` does.
//!
//! The attribute values are the kernel's `posix_acl_xattr` format: a little-endian `u32`
//! version (2), then entries of `u16` tag, `u16` permission bits, `u32` id.

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// The name of the default ACL attribute.
pub const DEFAULT_XATTR: &str = "system.posix_acl_default";
/// The name of the access ACL attribute.
pub const ACCESS_XATTR: &str = "system.posix_acl_access";

/// What a new object inherits from a parent's default ACL `default` when created with `mode`
/// (permission bits, before any umask): its mode, and its access ACL when the ACL says more
/// than the mode can (`None` for the three base entries only). `None` for a malformed value.
pub fn inherit(default: &[u8], mode: u32) -> Option<(u32, Option<Vec<u8>>)> {
    let mut entries = parse(default)?;
    let has_mask = entries.iter().any(|e| e.0 == MASK);
    let (mut owner, mut group, mut other) = (0, 0, 0);
    for e in entries.iter_mut() {
        match e.0 {
            USER_OBJ => {
                e.1 &= ((mode >> 6) & 7) as u16;
                owner = e.1;
            }
            GROUP_OBJ if !has_mask => {
                e.1 &= ((mode >> 3) & 7) as u16;
                group = e.1;
            }
            MASK => {
                e.1 &= ((mode >> 3) & 7) as u16;
                group = e.1;
            }
            OTHER => {
                e.1 &= (mode & 7) as u16;
                other = e.1;
            }
            _ => {}
        }
    }
    let new_mode =
        (mode & !0o777) | (u32::from(owner) << 6) | (u32::from(group) << 3) | u32::from(other);
    let extended = entries.len() > 3;
    Some((new_mode, extended.then(|| encode(&entries))))
}

fn parse(v: &[u8]) -> Option<Vec<(u16, u16, u32)>> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 {
        return None;
    }
    if u32::from_le_bytes(v[..4].try_into().ok()?) != VERSION {
        return None;
    }
    Some(
        v[4..]
            .chunks_exact(8)
            .map(|c| {
                (
                    u16::from_le_bytes([c[0], c[1]]),
                    u16::from_le_bytes([c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect(),
    )
}

fn encode(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        encode(entries)
    }

    #[test]
    fn base_entries_only_give_a_mode() {
        let d = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (GROUP_OBJ, 5, u32::MAX),
            (OTHER, 5, u32::MAX),
        ]);
        assert_eq!(inherit(&d, 0o666), Some((0o644, None)));
        assert_eq!(inherit(&d, 0o777), Some((0o755, None)));
    }

    #[test]
    fn the_mask_takes_the_group_bits() {
        // default:user::rwx, user:1234:rwx, group::r-x, mask::rwx, other::r-x (setfacl -d -m u:1234:rwx)
        let d = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (0x02, 7, 1234),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER, 5, u32::MAX),
        ]);
        let (mode, access) = inherit(&d, 0o666).unwrap();
        assert_eq!(mode, 0o664);
        let e = parse(&access.unwrap()).unwrap();
        assert!(e.contains(&(MASK, 6, u32::MAX)));
        assert!(e.contains(&(0x02, 7, 1234)));
        assert_eq!(inherit(&d, 0o777).unwrap().0, 0o775);
    }

    #[test]
    fn malformed_values_are_refused() {
        assert_eq!(inherit(b"", 0o644), None);
        assert_eq!(inherit(&[1, 0, 0, 0], 0o644), None);
        assert_eq!(inherit(&[2, 0, 0, 0, 1], 0o644), None);
    }
}

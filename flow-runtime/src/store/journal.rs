//! The write journal of a [`RedbStore`](super::RedbStore): each group
//! commit appends its writes to the database as ONE record, and the
//! records are applied to the tables only once they add up to
//! [`RedbOptions::journal_bytes`](super::RedbOptions::journal_bytes).
//!
//! Why: redb is a copy-on-write B-tree. A commit rewrites every leaf page
//! (4 KiB) it touches, and the branch pages above them. With many flows in
//! flight, one group commit of a few hundred steps touches nearly every
//! page of the checkpoint, session and outbox tables (each step changes one
//! ~150-byte entry in each, at random places), so every commit wrote and
//! fsynced the whole hot part of the database: about 160 pages per commit
//! for 1,000 ping flows, whose ~110 KB of new entries fill 27. With the
//! journal a commit writes its record (new pages at the end of one table)
//! and the tables are rewritten once per many commits, each key once
//! however often it changed meanwhile.
//!
//! What keeps it correct:
//! * a record is written in the same transaction (the same fsync) that
//!   makes the group durable, and records are applied to the tables in
//!   the same transaction that deletes them: after a crash the file holds
//!   either the record or its effect, never both or neither;
//! * the writes of the records not yet applied are kept in memory (the
//!   [`Overlay`], last write per key) and every read of the store looks
//!   there first, so a reader sees exactly what is durable;
//! * opening the store applies whatever records a crash left, before the
//!   first read; closing it cleanly applies them too, so a file left by a
//!   clean shutdown holds no records;
//! * a group that removes a key range is applied directly (with the
//!   records before it), so the overlay never has to represent a range.
//!
//! The memory the overlay holds and the time opening after a crash spends
//! applying records are both bounded by `journal_bytes`.

use super::{Entries, StoreError, Table, WriteBatch};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The name of the journal's table: keys are record numbers (u64,
/// big-endian), values are [`encode`]d groups. Not a `svc/` name, so no
/// service can clash with it.
pub(super) const TABLE: &str = "journal";

const DELETE: u8 = 0;
const PUT: u8 = 1;

/// Appends the writes of `batches` (in order) to `out` as one record:
/// per write, a tag byte (0 delete, 1 put), the table name (u16 length),
/// the key (u32 length) and for a put the value (u32 length), lengths
/// little-endian. Range removals are not journaled (see the module docs).
pub(super) fn encode(batches: &[&WriteBatch], out: &mut Vec<u8>) -> Result<(), StoreError> {
    fn len<T: TryFrom<usize>>(n: usize, what: &str) -> Result<T, StoreError> {
        T::try_from(n)
            .map_err(|_| StoreError(format!("{what} of {n} bytes is too long to journal")))
    }
    // Sized once: a group's record is often hundreds of KB.
    let size: usize = batches
        .iter()
        .flat_map(|b| &b.ops)
        .map(|op| 11 + op.table.name().len() + op.key.len() + op.value.as_ref().map_or(0, Vec::len))
        .sum();
    out.reserve(size);
    for op in batches.iter().flat_map(|b| &b.ops) {
        let name = op.table.name().as_bytes();
        out.push(if op.value.is_some() { PUT } else { DELETE });
        out.extend_from_slice(&len::<u16>(name.len(), "a table name")?.to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&len::<u32>(op.key.len(), "a key")?.to_le_bytes());
        out.extend_from_slice(&op.key);
        if let Some(value) = &op.value {
            out.extend_from_slice(&len::<u32>(value.len(), "a value")?.to_le_bytes());
            out.extend_from_slice(value);
        }
    }
    Ok(())
}

/// One write read back from a record: table name, key, value (`None`:
/// delete).
pub(super) type Decoded<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// The writes of one record, in order. A record that does not parse (a
/// damaged file) is an error saying what is wrong with it, never a panic.
pub(super) fn decode(bytes: &[u8]) -> Result<Vec<Decoded<'_>>, String> {
    let damaged = |what: &str| what.to_owned();
    let mut input = Cursor(bytes);
    let mut writes = Vec::new();
    while !input.0.is_empty() {
        let cut = || damaged("it ends inside a write");
        let tag = input.take(1).ok_or_else(cut)?[0];
        let name_len = input.u16().ok_or_else(cut)?;
        let name = input.take(name_len).ok_or_else(cut)?;
        let name = std::str::from_utf8(name).map_err(|_| damaged("a table name is not UTF-8"))?;
        let key_len = input.u32().ok_or_else(cut)?;
        let key = input.take(key_len).ok_or_else(cut)?;
        let value = match tag {
            PUT => {
                let value_len = input.u32().ok_or_else(cut)?;
                Some(input.take(value_len).ok_or_else(cut)?)
            }
            DELETE => None,
            _ => return Err(damaged("a write has an unknown tag")),
        };
        writes.push((name, key, value));
    }
    Ok(writes)
}

/// What is left of a record being decoded.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u16(&mut self) -> Option<usize> {
        let bytes = self.take(2)?;
        Some(usize::from(u16::from_le_bytes([bytes[0], bytes[1]])))
    }

    fn u32(&mut self) -> Option<usize> {
        let bytes = self.take(4)?;
        usize::try_from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])).ok()
    }
}

/// The journal's writes to one table, by key: the value (`None`:
/// deleted). Ordered, because range reads lay the overlay over the
/// table's entries: a hash map made the committer ~20% cheaper with
/// 1,000 ping flows, but sorting a table's writes for every range read
/// cost the trade demo's buyer (whose vault is read by ranges) 40% more
/// CPU.
pub(super) type Keys = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// One write of the overlay, borrowed: key and value (`None`: deleted).
pub(super) type Write<'a> = (&'a [u8], Option<&'a [u8]>);

/// The writes of the journal's records not yet applied to the tables,
/// the last per key, by table; and where the journal stands.
#[derive(Default)]
pub(super) struct Overlay {
    /// By table, by key.
    tables: BTreeMap<Table, Keys>,
    /// Bytes of the records not yet applied.
    pub(super) record_bytes: usize,
    /// The number the next record gets.
    pub(super) next_record: u64,
}

impl Overlay {
    /// What the records leave at `key`: `Some(Some(v))` written,
    /// `Some(None)` deleted, `None` untouched (read the table).
    pub(super) fn get(&self, table: &Table, key: &[u8]) -> Option<Option<&[u8]>> {
        self.tables
            .get(table)?
            .get(key)
            .map(|value| value.as_deref())
    }

    /// The writes to `table`, if any.
    pub(super) fn table(&self, table: &Table) -> Option<&Keys> {
        self.tables.get(table).filter(|t| !t.is_empty())
    }

    /// Every table's writes in key order (the order to apply them in:
    /// one walk down each B-tree).
    pub(super) fn tables_in_key_order(
        &self,
    ) -> impl Iterator<Item = (&Table, impl Iterator<Item = Write<'_>>)> {
        self.tables.iter().map(|(table, keys)| {
            let writes = keys.iter().map(|(k, v)| (k.as_slice(), v.as_deref()));
            (table, writes)
        })
    }

    /// Whether there is nothing to apply.
    pub(super) fn is_empty(&self) -> bool {
        self.record_bytes == 0 && self.tables.is_empty()
    }

    /// Takes in the writes of `batches` (a record just made durable). A
    /// key written again keeps its buffers: its value is copied into the
    /// old one's allocation when that is large enough.
    pub(super) fn add(&mut self, batches: &[&WriteBatch]) {
        for op in batches.iter().flat_map(|b| &b.ops) {
            let keys = match self.tables.get_mut(&op.table) {
                Some(keys) => keys,
                None => self.tables.entry(op.table.clone()).or_default(),
            };
            match (keys.get_mut(&op.key), &op.value) {
                (Some(Some(old)), Some(new)) => {
                    old.clear();
                    old.extend_from_slice(new);
                }
                (Some(slot), value) => *slot = value.clone(),
                (None, value) => {
                    keys.insert(op.key.clone(), value.clone());
                }
            }
        }
    }

    /// Takes in one decoded record (opening after a crash).
    pub(super) fn add_decoded(&mut self, writes: Vec<Decoded<'_>>) {
        for (name, key, value) in writes {
            let table = Table(Cow::Owned(name.to_owned()));
            self.tables
                .entry(table)
                .or_default()
                .insert(key.to_vec(), value.map(<[u8]>::to_vec));
        }
    }

    /// Forgets everything (the records were applied and deleted).
    pub(super) fn clear(&mut self) {
        self.tables.clear();
        self.record_bytes = 0;
    }

    /// `stored` (the table's entries from `from`, read with
    /// [`range_read_limit`](Self::range_read_limit)) with the overlay's
    /// writes in `from..to` laid over them, at most `limit` entries.
    pub(super) fn lay_over(
        &self,
        table: &Table,
        from: &[u8],
        to: Option<&[u8]>,
        stored: Entries,
        store_limit: usize,
        limit: usize,
    ) -> Entries {
        let writes = self.in_range(table, from, to);
        super::lay_over(stored, store_limit, limit, writes)
    }

    /// How many entries a range read must take from the table so that,
    /// after the overlay's deletes in `from..to` hide theirs, `limit` are
    /// still known.
    pub(super) fn range_read_limit(
        &self,
        table: &Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> usize {
        let deletes = self
            .in_range(table, from, to)
            .filter(|(_, v)| v.is_none())
            .count();
        limit.saturating_add(deletes)
    }

    /// The writes to `table` in `from..to`, in key order.
    fn in_range<'a>(
        &'a self,
        table: &Table,
        from: &'a [u8],
        to: Option<&'a [u8]>,
    ) -> impl Iterator<Item = Write<'a>> + 'a {
        use std::ops::Bound;
        self.tables
            .get(table)
            .into_iter()
            .flat_map(move |t| t.range::<[u8], _>((Bound::Included(from), Bound::Unbounded)))
            .take_while(move |(k, _)| to.is_none_or(|to| k.as_slice() < to))
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WriteBatch {
        let mut batch = WriteBatch::default();
        batch.put(Table::CHECKPOINTS, vec![1, 2], vec![3; 40]);
        batch.delete(Table::OUTBOX, vec![9]);
        batch.put(Table::service("vault"), vec![], vec![]);
        batch
    }

    #[test]
    fn a_record_decodes_to_its_writes_in_order() {
        let (a, b) = (sample(), sample());
        let mut record = Vec::new();
        encode(&[&a, &b], &mut record).unwrap();
        let writes = decode(&record).unwrap();
        let expected: Vec<Decoded<'_>> = [&a, &b]
            .iter()
            .flat_map(|batch| &batch.ops)
            .map(|op| (op.table.name(), op.key.as_slice(), op.value.as_deref()))
            .collect();
        assert_eq!(writes, expected);
        assert_eq!(decode(&[]).unwrap(), Vec::<Decoded<'_>>::new());
    }

    /// A damaged record is an error wherever it is cut or changed, never a
    /// panic or a wrong read past its end.
    #[test]
    fn a_cut_or_damaged_record_is_an_error_never_a_panic() {
        let mut record = Vec::new();
        encode(&[&sample()], &mut record).unwrap();
        let whole = decode(&record).unwrap().len();
        for cut in 1..record.len() {
            match decode(&record[..cut]) {
                Err(why) => assert!(why.contains("ends inside"), "{why}"),
                // Cut exactly between two writes: a shorter, valid record.
                Ok(writes) => assert!(writes.len() < whole),
            }
        }
        for at in 0..record.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = record.clone();
                damaged[at] ^= flip;
                let _ = decode(&damaged);
            }
        }
        let mut bad_tag = record.clone();
        bad_tag[0] = 7;
        assert!(decode(&bad_tag).unwrap_err().contains("unknown tag"));
    }

    #[test]
    fn the_overlay_keeps_the_last_write_per_key_and_lays_it_over_a_range() {
        let mut overlay = Overlay::default();
        let mut first = WriteBatch::default();
        first.put(Table::OUTBOX, vec![2], vec![20]);
        first.put(Table::OUTBOX, vec![4], vec![40]);
        let mut second = WriteBatch::default();
        second.delete(Table::OUTBOX, vec![2]);
        second.put(Table::OUTBOX, vec![5], vec![50]);
        overlay.add(&[&first, &second]);
        assert_eq!(overlay.get(&Table::OUTBOX, &[2]), Some(None));
        assert_eq!(overlay.get(&Table::OUTBOX, &[4]), Some(Some(&[40][..])));
        assert_eq!(overlay.get(&Table::OUTBOX, &[3]), None);
        assert_eq!(overlay.get(&Table::SESSIONS, &[4]), None);
        // The table holds 1, 2, 3; the read asks for 3 entries from 1.
        let limit = 3;
        let store_limit = overlay.range_read_limit(&Table::OUTBOX, &[1], None, limit);
        assert_eq!(store_limit, 4, "one more stored entry per delete in range");
        let stored = vec![
            (vec![1], vec![10]),
            (vec![2], vec![11]),
            (vec![3], vec![12]),
        ];
        let read = overlay.lay_over(&Table::OUTBOX, &[1], None, stored, store_limit, limit);
        assert_eq!(
            read,
            vec![
                (vec![1], vec![10]),
                (vec![3], vec![12]),
                (vec![4], vec![40])
            ]
        );
        // A bounded range leaves out the writes past its end.
        let stored = vec![(vec![1], vec![10]), (vec![3], vec![12])];
        let read = overlay.lay_over(&Table::OUTBOX, &[1], Some(&[5]), stored, 10, 10);
        assert_eq!(
            read,
            vec![
                (vec![1], vec![10]),
                (vec![3], vec![12]),
                (vec![4], vec![40])
            ]
        );
    }
}

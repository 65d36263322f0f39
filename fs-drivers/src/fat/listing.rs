//! A parsed directory kept in memory between operations: the slot bytes, the live items in
//! slot order, a case-folded name index, and the 8.3 names in use. Creating 2000 files in one
//! directory then costs O(n) slot scans instead of O(n) full parses each.

use super::dir_entry::{Dir, Item, DELETED};
use super::short_name::fold;
use std::collections::{BTreeMap, HashMap, HashSet};

pub struct Listing {
    pub dir: Dir,
    /// Live items by the slot index of their 8.3 entry.
    pub items: BTreeMap<usize, Item>,
    /// Folded long name and folded 8.3 display name -> item index (the first one wins, as a
    /// linear scan would).
    index: HashMap<String, usize>,
    pub shorts: HashSet<[u8; 11]>,
    /// Index of the end marker (slots from here on are free).
    pub end: usize,
    pub subdirs: u32,
    /// Whether two items share a folded name or an 8.3 name (only foreign images do); removal
    /// then has to look for the survivor.
    dups: bool,
}

impl Listing {
    pub fn new(dir: Dir) -> Listing {
        let parsed = dir.parse();
        let mut l = Listing {
            dir,
            items: BTreeMap::new(),
            index: HashMap::new(),
            shorts: HashSet::new(),
            end: parsed.end,
            subdirs: 0,
            dups: false,
        };
        for item in parsed.items {
            l.add(item);
        }
        l
    }

    fn add(&mut self, item: Item) {
        for key in [fold(&item.name), fold(&item.short_display)] {
            match self.index.get_mut(&key) {
                Some(e) if *e != item.idx => {
                    self.dups = true;
                    *e = (*e).min(item.idx);
                }
                Some(_) => {}
                None => {
                    self.index.insert(key, item.idx);
                }
            }
        }
        if !self.shorts.insert(item.entry.short()) {
            self.dups = true;
        }
        if item.entry.is_dir() {
            self.subdirs += 1;
        }
        self.items.insert(item.idx, item);
    }

    /// Whether any slot before the end marker is a deleted one.
    pub fn has_deleted(&self) -> bool {
        self.dir.data[..self.end * 32]
            .chunks(32)
            .any(|s| s[0] == DELETED)
    }

    pub fn find(&self, name: &str) -> Option<&Item> {
        self.index.get(&fold(name)).and_then(|i| self.items.get(i))
    }

    /// Records slots just written at `start..start+slots.len()`; the last one is the 8.3 entry
    /// of `item`.
    pub fn inserted(&mut self, start: usize, slots: &[[u8; 32]], item: Item) {
        for (i, s) in slots.iter().enumerate() {
            let at = (start + i) * 32;
            self.dir.data[at..at + 32].copy_from_slice(s);
        }
        let after = start + slots.len();
        if after > self.end {
            self.end = after;
            if after < self.dir.slots() {
                self.dir.data[after * 32] = 0;
            }
        }
        self.add(item);
    }

    /// Records that an item's slots were marked deleted.
    pub fn removed(&mut self, idx: usize) {
        let Some(item) = self.items.remove(&idx) else {
            return;
        };
        for s in item.first_idx..=item.idx {
            self.dir.data[s * 32] = DELETED;
        }
        if item.entry.is_dir() {
            self.subdirs -= 1;
        }
        self.shorts.remove(&item.entry.short());
        for key in [fold(&item.name), fold(&item.short_display)] {
            if self.index.get(&key) == Some(&idx) {
                self.index.remove(&key);
                if !self.dups {
                    continue;
                }
                // Another item may answer to the same folded name (foreign images).
                if let Some(other) = self
                    .items
                    .values()
                    .find(|i| fold(&i.name) == key || fold(&i.short_display) == key)
                {
                    self.index.insert(key, other.idx);
                }
            }
        }
        if self.dups
            && self
                .items
                .values()
                .any(|i| i.entry.short() == item.entry.short())
        {
            self.shorts.insert(item.entry.short());
        }
    }
}

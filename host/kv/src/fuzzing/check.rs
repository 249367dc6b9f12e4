//! Each operation run on the buckets and checked against the model.

use std::collections::HashSet;

use super::model::{Model, Refusal, refusal_of};
use super::ops::{Op, key};
use super::{Handles, Outcome, Slot, commits, op_keys, run_write};
use crate::{Error, MAX_KEY_LEN, MAX_PAGE, fault};

/// Runs a write (or checks one already run: `ran`) against the model, which it updates.
pub(super) fn check_write(
    h: &Handles,
    model: &mut Model,
    slots: &mut [Slot; 4],
    op: &Op,
    ran: Option<Outcome>,
) -> Result<(), String> {
    // An empty slot is filled first, as a guest would read before it swaps.
    if let Op::Swap(s, slot, _) = op
        && slots[*slot].is_none()
    {
        check_read(h, model, slots, &Op::Cas(*s, *slot, key(0)))?;
    }
    let held = model.map.len();
    let r = match ran {
        Some(r) => r,
        None => run_write(h, slots, op),
    };
    match op {
        Op::Set(_, k, v) => {
            let want = model.set_many(&[(k.clone(), v.clone())]);
            check_refusal(&r, want, op)?;
            if want == Refusal::Fine {
                model.write(vec![(k.clone(), v.clone())]);
            }
        }
        Op::SetMany(_, pairs) => {
            let want = model.set_many(pairs);
            check_refusal(&r, want, op)?;
            if want == Refusal::Fine {
                model.write(pairs.clone());
            }
        }
        Op::Delete(_, k) => {
            let want = if k.len() > MAX_KEY_LEN {
                Refusal::KeyTooLong
            } else {
                Refusal::Fine
            };
            check_refusal(&r, want, op)?;
            model.map.remove(k);
        }
        Op::DeleteMany(_, keys) => {
            let want = if keys.iter().any(|k| k.len() > MAX_KEY_LEN) {
                Refusal::KeyTooLong
            } else {
                Refusal::Fine
            };
            check_refusal(&r, want, op)?;
            if want == Refusal::Fine {
                for k in keys {
                    model.map.remove(k);
                }
            }
        }
        Op::IncU(_, k, d) => {
            let predicted = model.increment(k, |c: u64| c.checked_add(*d));
            check_increment(model, &r, predicted, k, op)?;
        }
        Op::IncI(_, k, d) => {
            let predicted = model.increment(k, |c: i64| c.checked_add(*d));
            check_increment(model, &r, predicted, k, op)?;
        }
        Op::Swap(s, slot, v) => {
            let (cas, generation) = slots[*slot].clone().expect("filled above");
            let k = cas.key().to_string();
            let now = model.map.get(&k).map(|(_, g)| *g);
            let want = if k.len() > MAX_KEY_LEN {
                Refusal::KeyTooLong
            } else {
                match model.check_pair(&k, v) {
                    Refusal::Fine if now == generation && !model.fits(&[(k.clone(), v.clone())]) => Refusal::Quota,
                    r => r,
                }
            };
            check_refusal(&r, want, op)?;
            if want == Refusal::Fine {
                if now == generation {
                    ensure!(
                        matches!(&r, Ok(m) if m == "swapped"),
                        "{op:?}: {r:?}, the read was fresh"
                    );
                    model.write(vec![(k.clone(), v.clone())]);
                } else {
                    let current = model.value(&k);
                    ensure!(
                        matches!(&r, Ok(m) if *m == format!("lost: {:?}", current.as_deref())),
                        "{op:?}: {r:?}, the read was stale (now {current:?})"
                    );
                    // A guest retries with what the loss answered: a fresh read.
                    if let Ok(fresh) = h.bucket(*s).cas(&k) {
                        slots[*slot] = Some((fresh, model.map.get(&k).map(|(_, g)| *g)));
                    }
                }
            }
        }
        Op::Clear(_) => {
            ensure!(
                matches!(&r, Ok(n) if *n == held.to_string()),
                "{op:?}: {r:?}, model held {held} keys"
            );
            model.map.clear();
        }
        _ => unreachable!("not a write: {op:?}"),
    }
    Ok(())
}

/// Checks an increment of `k` against what the model predicted (the refusal, or the sum and the
/// value stored), and applies it to the model.
fn check_increment<T: std::fmt::Display>(
    model: &mut Model,
    r: &Outcome,
    (want, out): (Refusal, Option<(T, Vec<u8>)>),
    k: &str,
    op: &Op,
) -> Result<(), String> {
    check_refusal(r, want, op)?;
    if let (Refusal::Fine, Some((sum, stored))) = (want, out) {
        ensure!(
            matches!(r, Ok(n) if *n == sum.to_string()),
            "{op:?}: {r:?}, model {sum}"
        );
        model.write(vec![(k.to_string(), stored)]);
    }
    Ok(())
}

/// Checks that a write ended as the model says it must.
fn check_refusal(r: &Outcome, want: Refusal, op: &Op) -> Result<(), String> {
    let got = refusal_of(r).map_err(|e| format!("{op:?}: {e}"))?;
    ensure!(got == want, "{op:?}: {r:?}, the model says {want:?}");
    Ok(())
}

/// A write whose commit fails: one that would commit fails, and changes nothing; one that would
/// not (a refusal, a swap that loses) ends as it would without the fault.
pub(super) fn check_faulty(h: &Handles, model: &mut Model, slots: &mut [Slot; 4], op: &Op) -> Result<(), String> {
    if let Op::Swap(s, slot, _) = op
        && slots[*slot].is_none()
    {
        check_read(h, model, slots, &Op::Cas(*s, *slot, key(0)))?;
    }
    let commits = commits(model, slots, op);
    let r = {
        let _armed = fault::inject(fault::Point::BeforeCommit);
        run_write(h, slots, op)
    };
    let before = model.map.clone();
    if commits {
        ensure!(
            matches!(&r, Err(e) if e.full_message().contains("injected failure")),
            "{op:?} with a failing commit: {r:?}"
        );
    } else {
        check_write(h, model, slots, op, Some(r))?;
        ensure!(model.map == before, "{op:?}: the model changed");
    }
    // Every key the write named, and every key held, is as it was.
    for k in before.keys().chain(op_keys(op).iter()) {
        if k.len() > MAX_KEY_LEN {
            continue;
        }
        let got = h.first.get(k);
        let want = model.value(k);
        ensure!(
            matches!(&got, Ok(v) if *v == want),
            "{op:?} with a failing commit changed {k:?}: {got:?}, want {want:?}"
        );
    }
    Ok(())
}

/// Runs a read and checks its answer against the model.
pub(super) fn check_read(h: &Handles, model: &Model, slots: &mut [Slot; 4], op: &Op) -> Result<(), String> {
    let too_long = |k: &str| k.len() > MAX_KEY_LEN;
    match op {
        Op::Get(s, k) => {
            let r = h.bucket(*s).get(k);
            if too_long(k) {
                ensure!(refusal_of(&r)? == Refusal::KeyTooLong, "{op:?}: {r:?}");
            } else {
                ensure!(
                    matches!(&r, Ok(v) if *v == model.value(k)),
                    "{op:?}: {r:?}, model {:?}",
                    model.value(k)
                );
            }
        }
        Op::Exists(s, k) => {
            let r = h.bucket(*s).exists(k);
            if too_long(k) {
                ensure!(refusal_of(&r)? == Refusal::KeyTooLong, "{op:?}: {r:?}");
            } else {
                ensure!(r.as_ref().ok() == Some(&model.map.contains_key(k)), "{op:?}: {r:?}");
            }
        }
        Op::GetMany(s, keys, max) => {
            let r = h.bucket(*s).get_many(keys, *max);
            let want: Vec<Option<Vec<u8>>> = keys.iter().map(|k| model.value(k)).collect();
            let total: u64 = want.iter().flatten().map(|v| v.len() as u64).sum();
            match r {
                _ if keys.iter().any(|k| too_long(k)) => {
                    ensure!(refusal_of(&r)? == Refusal::KeyTooLong, "{op:?}: {r:?}")
                }
                Ok(got) => {
                    ensure!(total <= *max, "{op:?}: gathered {total} bytes, past its bound");
                    ensure!(got == want, "{op:?}: {got:?}, model {want:?}");
                }
                Err(Error::TooMuchAtOnce { .. }) => ensure!(total > *max, "{op:?}: refused {total} bytes"),
                Err(e) => return Err(format!("{op:?}: {}", e.full_message())),
            }
        }
        Op::Cas(s, slot, k) => {
            let r = h.bucket(*s).cas(k);
            if too_long(k) {
                ensure!(refusal_of(&r)? == Refusal::KeyTooLong, "{op:?}: {r:?}");
            } else {
                let cas = r.map_err(|e| format!("{op:?}: {}", e.full_message()))?;
                ensure!(
                    cas.current().map(<[u8]>::to_vec) == model.value(k),
                    "{op:?}: read {:?}, model {:?}",
                    cas.current(),
                    model.value(k)
                );
                slots[*slot] = Some((cas, model.map.get(k).map(|(_, g)| *g)));
            }
        }
        Op::List(s, size) => {
            let page_max = if *size == 0 { MAX_PAGE } else { (*size).min(MAX_PAGE) };
            let mut listed = Vec::new();
            let mut from = 0;
            loop {
                let page = h
                    .bucket(*s)
                    .list_keys(from, *size)
                    .map_err(|e| format!("{op:?}: {}", e.full_message()))?;
                ensure!(page.keys.len() <= page_max, "{op:?}: a page of {}", page.keys.len());
                listed.extend(page.keys);
                ensure!(
                    listed.len() <= model.map.len(),
                    "{op:?}: the listing runs on: {listed:?}"
                );
                match page.next {
                    Some(n) => from = n,
                    None => break,
                }
            }
            let unique: HashSet<&String> = listed.iter().collect();
            ensure!(unique.len() == listed.len(), "{op:?}: a key listed twice: {listed:?}");
            ensure!(
                unique == model.map.keys().collect::<HashSet<_>>(),
                "{op:?}: listed {listed:?}, model {:?}",
                model.map.keys().collect::<Vec<_>>()
            );
        }
        _ => unreachable!("not a read: {op:?}"),
    }
    Ok(())
}

//! Differential tests of hand-written flow bodies.
//!
//! Each body below is written once and stamped twice by
//! [`flow_tests::diff_flows!`]: as a `#[flow]` state machine
//! (`generated::name`) and as a plain `async fn` (`plain::name`) whose
//! awaits are ordinary Rust futures. For proptest-drawn counterparty inputs
//! (`PROPTEST_CASES`, default 256 per body) both must make the same sends,
//! open the same sessions, wait on the same things and return the same
//! result — and the state machine must do so too when its state is
//! serialized and deserialized (rmp-serde) at every suspension.
//!
//! Together the bodies cover every control-flow form the transform must
//! support around an `.await` (`docs/macro.md`, section 2): `let`, `if`/`else`,
//! `if let`, `let ... else`, `match` (guards, or-patterns, bindings),
//! `loop` (also with `break value`), `while`, `while let`, `for` over a
//! `Vec` and over a range, labelled `break`/`continue`, early `return`,
//! `?`, shadowing, awaits nested four deep, sub-flows (also failing ones),
//! `sleep`, `send_and_receive`, several sessions and a session received as
//! an argument; and the shapes a transform gets wrong most easily: points
//! of one name in both branches of an `if` and in several `match` arms, a
//! `let` whose value is an `if` that waits, a `let ... else` whose `else`
//! waits (with the type on the pattern), an early return after an await in
//! a branch before a later use of an outer local, a local dead across an
//! await and assigned again, and a struct of the user's kept in the state.

use flow_runtime::prelude::{FlowError, Party, PublicKey};
use flow_runtime::{FlowSession as RuntimeSession, SessionId};
use flow_tests::differential::{Coverage, Twins, check_flow, compare};
use flow_tests::plain::{FlowContext as PlainContext, plain_session};
use flow_tests::trace::{Input, Outcome};
use std::time::Duration;

/// A helper returning `Result`, for `?` in the middle of a body.
pub fn at_most(limit: u32, n: u32) -> Result<u32, FlowError> {
    if n <= limit {
        Ok(n)
    } else {
        Err(FlowError::new(format!("{n} is more than {limit}")))
    }
}

/// A message kind to `match` on, with a binding in one arm.
pub enum Kind {
    Ping(u32),
    Pong,
    Other,
}

/// A struct of the user's, kept in a flow's state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Pair {
    pub price: u32,
    pub qty: u32,
}

flow_tests::diff_flows! {
    // The contract's ping: `while`, buffered send, receive + validate, `?`.
    fn ping(ctx, peer: Party, rounds: u32) -> u64 {
        let session = ctx.initiate_flow(&peer);
        let mut total: u64 = 0;
        let mut i: u32 = 0;
        while i < rounds {
            session.send(&i)?;
            let echo: u32 = session.receive::<u32>().await?
                .validate(|n| if n == i { Ok(n) } else { Err(FlowError::new("wrong echo")) })?;
            total += u64::from(echo);
            i += 1;
        }
        Ok(total)
    }

    // A responder: the session is an argument; `loop` left by early
    // `return`; the sum is shadowed by a wider type.
    fn responder(ctx, session: FlowSession) -> u64 {
        let mut count: u32 = 0;
        loop {
            let n: u32 = session.receive::<u32>().await?.validate(Ok)?;
            if n == 0 {
                let count: u64 = u64::from(count) * 10;
                return Ok(count);
            }
            session.send(&n.wrapping_mul(2))?;
            count += 1;
        }
    }

    // `if` / `else if` / `else` with awaits in every branch and in nested
    // branches; a value assigned in branches and used after them.
    fn branches(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let first: u32 = s.receive::<u32>().await?.validate(Ok)?;
        let picked: u64;
        if first < 3 {
            let a: u32 = s.send_and_receive::<u32>(&"small").await?.validate(Ok)?;
            if a.is_multiple_of(2) {
                let b: u32 = s.receive::<u32>().await?.validate(Ok)?;
                picked = u64::from(a) + u64::from(b);
            } else {
                picked = u64::from(a);
            }
        } else if first < 6 {
            s.send(&"medium")?;
            picked = 100 + u64::from(s.receive::<u32>().await?.validate(Ok)?);
        } else {
            picked = 1000;
        }
        s.send(&picked)?;
        Ok(picked + u64::from(first))
    }

    // `match` with literal, or-pattern, guard and binding arms, awaits in
    // arms, and a binding rebound with an annotated `let` to cross an await.
    fn matcher(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let mut log: Vec<u32> = Vec::new();
        for _round in 0..3u32 {
            let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
            match n {
                0 => {
                    log.push(0);
                }
                1 | 2 => {
                    let extra: u32 = s.send_and_receive::<u32>(&n).await?.validate(Ok)?;
                    log.push(extra);
                }
                big if big > 5 => {
                    let big: u32 = big;
                    ctx.sleep(Duration::from_secs(u64::from(big))).await;
                    log.push(big);
                }
                other => {
                    let other: u32 = other;
                    s.send(&other)?;
                    let again: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    log.push(again.wrapping_add(other * 100));
                }
            }
        }
        s.send(&log)?;
        Ok(log.iter().map(|&x| u64::from(x)).sum())
    }

    // `if let` and `let ... else` over received options; the bindings are
    // rebound with annotated `let`s before the next await.
    fn options(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let raw: u32 = s.receive::<u32>().await?.validate(Ok)?;
        let maybe: Option<u32> = if raw.is_multiple_of(2) { Some(raw / 2) } else { None };
        let mut acc: u64 = 0;
        if let Some(half) = maybe {
            let half: u32 = half;
            let echo: u32 = s.send_and_receive::<u32>(&half).await?.validate(Ok)?;
            acc += u64::from(half) + u64::from(echo);
        } else {
            s.send(&"odd")?;
        }
        let second: Option<u32> = s.receive::<Option<u32>>().await
            .ok()
            .and_then(|u| u.validate(Ok).ok())
            .flatten();
        let Some(value) = second.or(maybe) else {
            return Err(FlowError::new("nothing to work with"));
        };
        let value: u32 = value;
        ctx.sleep(Duration::from_millis(5)).await;
        Ok(acc * 1000 + u64::from(value))
    }

    // `loop` as an expression: `break value` after awaits.
    fn loop_value(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let mut tries: u32 = 0;
        let found: u32 = loop {
            tries += 1;
            let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
            if n > 4 || tries == 4 {
                break n;
            }
            s.send(&tries)?;
        };
        Ok(u64::from(found) * 10 + u64::from(tries))
    }

    // `while let` over a work queue that grows while it is drained.
    fn work_queue(ctx, peer: Party, seed: Vec<u32>) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let mut queue: Vec<u32> = seed;
        let mut pushed: u32 = 0;
        let mut done: u64 = 0;
        while let Some(item) = queue.pop() {
            let item: u32 = item;
            let reply: u32 = s.send_and_receive::<u32>(&item).await?.validate(Ok)?;
            if reply.is_multiple_of(3) && pushed < 3 {
                queue.push(reply.wrapping_add(item));
                pushed += 1;
            }
            done = done * 7 + u64::from(reply);
        }
        Ok(done)
    }

    // `for` over a range and over a `Vec` built from received values.
    fn for_loops(ctx, peer: Party, rounds: u32) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let mut items: Vec<u32> = Vec::new();
        for i in 0..rounds {
            let i: u32 = i;
            let n: u32 = s.send_and_receive::<u32>(&i).await?.validate(Ok)?;
            items.push(n.wrapping_add(i));
        }
        let mut total: u64 = 0;
        for item in items {
            let item: u32 = item;
            s.send(&item)?;
            let ack: u32 = s.receive::<u32>().await?.validate(Ok)?;
            total += u64::from(item) * u64::from(ack);
        }
        Ok(total)
    }

    // Labelled `break` and `continue` out of nested loops, each right after
    // an await.
    fn labelled(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let mut trail: u64 = 0;
        'outer: for round in 0..3u32 {
            let round: u32 = round;
            let mut inner: u32 = 0;
            'inner: loop {
                inner += 1;
                let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
                trail = trail * 10 + u64::from(n % 10);
                if n == 0 {
                    continue 'outer;
                }
                if n == 1 {
                    break 'outer;
                }
                if n == 2 || inner > 2 {
                    break 'inner;
                }
                s.send(&(round, inner))?;
            }
            s.send(&round)?;
        }
        Ok(trail)
    }

    // `?` on a helper and on validate, early `return Ok` and `return Err`
    // from inside a loop.
    fn early_exits(ctx, peer: Party, limit: u32) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let mut sum: u64 = 0;
        for _ in 0..5u32 {
            let n: u32 = s.receive::<u32>().await?.validate(|n| at_most(100, n))?;
            let n: u32 = at_most(limit, n)?;
            if n == 3 {
                return Ok(sum);
            }
            if n == 4 {
                return Err(FlowError::new("four is not allowed"));
            }
            sum += u64::from(n);
            s.send(&sum)?;
        }
        Ok(sum + 1000)
    }

    // Shadowing: the same name rebound with other types, in inner blocks
    // and across awaits; the outer binding must come back after the block.
    fn shadowing(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
        let outer: u32 = x;
        {
            let x: u64 = u64::from(x) * 1000;
            s.send(&x)?;
            let y: u32 = s.receive::<u32>().await?.validate(Ok)?;
            let x: u64 = x + u64::from(y);
            s.send(&x)?;
        }
        s.send(&x)?;
        let x: String = format!("{x}-{outer}");
        let z: u32 = s.receive::<u32>().await?.validate(Ok)?;
        s.send(&x)?;
        Ok(x.len() as u64 * 100 + u64::from(z))
    }

    // Awaits nested four deep: loop > if > match > for.
    fn deep(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let mut acc: u64 = 1;
        let mut rounds: u32 = 0;
        loop {
            rounds += 1;
            if rounds > 2 {
                break;
            }
            if acc % 2 == 1 {
                match acc % 3 {
                    0 => {
                        acc += 5;
                    }
                    r => {
                        let r: u64 = r;
                        for k in 0..2u32 {
                            let k: u32 = k;
                            let n: u32 = s.send_and_receive::<u32>(&k).await?.validate(Ok)?;
                            acc = acc * 3 + u64::from(n) + r;
                        }
                    }
                }
            } else {
                let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
                acc += u64::from(n);
            }
        }
        Ok(acc)
    }

    // A child flow: its own session, sleep, and a protocol error.
    fn child(ctx, peer: Party, n: u32) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let reply: u32 = s.send_and_receive::<u32>(&n).await?.validate(Ok)?;
        if reply == 7 {
            return Err(FlowError::new("the child refuses seven"));
        }
        ctx.sleep(Duration::from_secs(1)).await;
        Ok(u64::from(reply) + u64::from(n))
    }

    // Sub-flows: in a loop, with `?`, and with the error caught by `match`.
    fn parent(ctx, peer: Party) -> u64 {
        let own = ctx.initiate_flow(&peer);
        let mut total: u64 = 0;
        for i in 1..3u32 {
            let i: u32 = i;
            let got: u64 = ctx.sub_flow(child(peer.clone(), i)).await?;
            total += got;
            own.send(&total)?;
        }
        let outcome: Result<u64, FlowError> = ctx.sub_flow(child(peer.clone(), 9)).await;
        let rescued: u64 = match outcome {
            Ok(v) => v,
            Err(e) => e.message().len() as u64,
        };
        let last: u32 = own.receive::<u32>().await?.validate(Ok)?;
        Ok(total * 1000 + rescued * 10 + u64::from(last))
    }

    // Timers: sleeps in a loop, the clock read after each one.
    fn sleeper(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let start: u64 = ctx.now().0;
        let mut waited: Vec<u64> = Vec::new();
        let mut delay: u64 = 10;
        while waited.len() < 3 {
            ctx.sleep(Duration::from_millis(delay)).await;
            waited.push(ctx.now().0 - start);
            let n: u32 = s.send_and_receive::<u32>(&delay).await?.validate(Ok)?;
            delay = delay * 2 + u64::from(n);
        }
        s.send(&waited)?;
        Ok(ctx.now().0 - start)
    }

    // Points of one name told apart by where they sit: `let x` in both
    // branches of an `if` that is the value of a `let`, `let y` in every arm
    // of a `match`.
    fn same_names(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let flag: u32 = s.receive::<u32>().await?.validate(Ok)?;
        let base: u64 = 7;
        let total: u64 = if flag.is_multiple_of(2) {
            let x: u32 = s.send_and_receive::<u32>(&"even").await?.validate(Ok)?;
            u64::from(x) + base
        } else {
            let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
            u64::from(x) * base
        };
        let kind: Kind = match flag % 3 {
            0 => Kind::Ping(flag),
            1 => Kind::Pong,
            _ => Kind::Other,
        };
        let extra: u64 = match kind {
            Kind::Ping(n) => {
                let y: u32 = s.send_and_receive::<u32>(&n).await?.validate(Ok)?;
                u64::from(y) + 1
            }
            Kind::Pong => {
                let y: u32 = s.receive::<u32>().await?.validate(Ok)?;
                u64::from(y) + 2
            }
            Kind::Other => {
                let y: u32 = s.receive::<u32>().await?.validate(Ok)?;
                u64::from(y) + 3
            }
        };
        Ok(total * 1000 + extra)
    }

    // A `let ... else` (type on the pattern) whose `else` waits and
    // returns; an early return after an await in a branch, before a later
    // use of the outer `big` (not stored at that await); `st` dead across
    // an await and assigned again.
    fn let_else_waits(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let big: Vec<u32> = vec![1, 2, 3];
        let first: u32 = s.receive::<u32>().await?.validate(Ok)?;
        let picked: Option<u64> = if first.is_multiple_of(3) { None } else { Some(u64::from(first) * 2) };
        let Some(limit): Option<u64> = picked else {
            let why: u32 = s.send_and_receive::<u32>(&"why").await?.validate(Ok)?;
            return Ok(u64::from(why) + 500);
        };
        if limit > 10 {
            let y: u32 = s.receive::<u32>().await?.validate(Ok)?;
            return Ok(u64::from(y) + limit);
        }
        let mut st: Vec<u64> = vec![limit];
        let x: u32 = s.send_and_receive::<u32>(&(st.len() as u32)).await?.validate(Ok)?;
        st = Vec::new();
        st.extend([u64::from(x), limit]);
        let z: u32 = s.send_and_receive::<u32>(&(st.len() as u32)).await?.validate(Ok)?;
        Ok(limit + st.iter().sum::<u64>() + u64::from(z) + big.len() as u64)
    }

    // A struct of the user's kept across an await.
    fn pair_kept(ctx, peer: Party) -> u64 {
        let s = ctx.initiate_flow(&peer);
        let price: u32 = s.receive::<u32>().await?.validate(Ok)?;
        let pair: Pair = Pair { price, qty: price % 5 + 1 };
        let extra: u32 = s.send_and_receive::<u32>(&pair.qty).await?.validate(Ok)?;
        Ok(u64::from(pair.price) * u64::from(pair.qty) + u64::from(extra))
    }

    // Two sessions with two parties, interleaved; the party kept in state.
    fn two_parties(ctx, first: Party, second: Party) -> u64 {
        let a = ctx.initiate_flow(&first);
        let b = ctx.initiate_flow(&second);
        a.send(&second)?;
        let x: u32 = a.receive::<u32>().await?.validate(Ok)?;
        let y: u32 = b.send_and_receive::<u32>(&x).await?.validate(Ok)?;
        let target: FlowSession = if y > x { a } else { b };
        let z: u32 = target.send_and_receive::<u64>(&(u64::from(x) + u64::from(y))).await?.validate(|n| Ok(n as u32))?;
        Ok(u64::from(x) * 10_000 + u64::from(y) * 100 + u64::from(z))
    }
}

fn bob() -> Party {
    Party::new("Bob", PublicKey([2; 32]))
}

fn carol() -> Party {
    Party::new("Carol", PublicKey([3; 32]))
}

/// Runs the property test for one body and returns how its runs ended.
fn check(name: &str, max_inputs: usize, twins: &Twins<'_, u64>) -> Coverage {
    check_flow(name, max_inputs, twins).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs one body on fixed inputs, checks both twins agree, and returns how
/// it ended.
fn outcome(twins: &Twins<'_, u64>, inputs: &[u32]) -> Outcome<u64> {
    let inputs: Vec<Input> = inputs.iter().copied().map(Input::Value).collect();
    compare(twins, &inputs)
        .unwrap_or_else(|e| panic!("{e}"))
        .outcome
}

/// The twins of a body that takes only the peer.
macro_rules! twins {
    ($name:ident($($arg:expr),*)) => {
        Twins::new(|| generated::$name($($arg),*), |_| plain::$name($($arg),*))
    };
}

#[test]
fn ping_agrees() {
    let twins = twins!(ping(bob(), 4));
    check("ping", 8, &twins);
    assert_eq!(outcome(&twins, &[0, 1, 2, 3]), Outcome::Done(Ok(6)));
}

#[test]
fn responder_agrees() {
    let id = SessionId(0xfeed);
    let twins = Twins::new(
        || generated::responder(RuntimeSession::from_id(id)),
        |ctx: &mut PlainContext| plain::responder(plain_session(ctx, id)),
    );
    let coverage = check("responder", 10, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    assert_eq!(outcome(&twins, &[5, 6, 0]), Outcome::Done(Ok(20)));
}

#[test]
fn branches_agree() {
    let twins = twins!(branches(bob()));
    let coverage = check("branches", 4, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    assert_eq!(outcome(&twins, &[1, 4, 5]), Outcome::Done(Ok(10)));
    assert_eq!(outcome(&twins, &[4, 7]), Outcome::Done(Ok(111)));
    assert_eq!(outcome(&twins, &[9]), Outcome::Done(Ok(1009)));
}

#[test]
fn matcher_agrees() {
    let twins = twins!(matcher(bob()));
    let coverage = check("matcher", 8, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    // 0 -> 0; 2 -> the extra answer 9; 9 -> a sleep, then 9.
    assert_eq!(outcome(&twins, &[0, 2, 9, 9, 4, 3]), Outcome::Done(Ok(18)));
}

#[test]
fn options_agree() {
    let coverage = check("options", 4, &twins!(options(bob())));
    assert!(coverage.ok > 0 && coverage.err > 0, "{coverage:?}");
}

#[test]
fn loop_value_agrees() {
    let twins = twins!(loop_value(bob()));
    let coverage = check("loop_value", 6, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    assert_eq!(outcome(&twins, &[1, 2, 6]), Outcome::Done(Ok(63)));
}

#[test]
fn work_queue_agrees() {
    let coverage = check("work_queue", 8, &twins!(work_queue(bob(), vec![1, 2])));
    assert!(coverage.ok > 0, "{coverage:?}");
}

#[test]
fn for_loops_agree() {
    let coverage = check("for_loops", 8, &twins!(for_loops(bob(), 3)));
    assert!(coverage.ok > 0, "{coverage:?}");
}

#[test]
fn labelled_agrees() {
    let twins = twins!(labelled(bob()));
    let coverage = check("labelled", 10, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    // Round 0: 5 (send), 0 -> continue 'outer; round 1: 1 -> break 'outer.
    assert_eq!(outcome(&twins, &[5, 0, 1]), Outcome::Done(Ok(501)));
    // Round 0: 2 -> break 'inner; round 1: 0; round 2: 2 -> done.
    assert_eq!(outcome(&twins, &[2, 0, 2]), Outcome::Done(Ok(202)));
}

#[test]
fn early_exits_agree() {
    let coverage = check("early_exits", 6, &twins!(early_exits(bob(), 6)));
    assert!(coverage.ok > 0 && coverage.err > 0, "{coverage:?}");
}

#[test]
fn shadowing_agrees() {
    let twins = twins!(shadowing(bob()));
    let coverage = check("shadowing", 4, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    // x is 7 again after the block: "7-7" has 3 characters.
    assert_eq!(outcome(&twins, &[7, 1, 2]), Outcome::Done(Ok(302)));
}

#[test]
fn deep_agrees() {
    let coverage = check("deep", 6, &twins!(deep(bob())));
    assert!(coverage.ok > 0, "{coverage:?}");
}

#[test]
fn sub_flows_agree() {
    let twins = twins!(parent(bob()));
    let coverage = check("parent", 8, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    // Children: 1+1 = 2 and 2+2 = 4 (total 6); the third refuses seven with
    // a 23-character message; the last answer is 4.
    assert_eq!(outcome(&twins, &[1, 2, 7, 4]), Outcome::Done(Ok(6234)));
}

#[test]
fn sleeper_agrees() {
    let twins = twins!(sleeper(bob()));
    let coverage = check("sleeper", 4, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    assert_eq!(outcome(&twins, &[0, 0, 0]), Outcome::Done(Ok(70)));
}

#[test]
fn two_parties_agree() {
    let coverage = check("two_parties", 4, &twins!(two_parties(bob(), carol())));
    assert!(coverage.ok > 0, "{coverage:?}");
}

#[test]
fn same_names_agree() {
    let twins = twins!(same_names(bob()));
    let coverage = check("same_names", 4, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    // 4: even, x = 3 -> 10; 4 % 3 = 1 -> Pong, y = 5 -> 7.
    assert_eq!(outcome(&twins, &[4, 3, 5]), Outcome::Done(Ok(10_007)));
    // 3: odd, x = 2 -> 14; 3 % 3 = 0 -> Ping(3), y = 1 -> 2.
    assert_eq!(outcome(&twins, &[3, 2, 1]), Outcome::Done(Ok(14_002)));
    // 5: odd, x = 1 -> 7; 5 % 3 = 2 -> Other, y = 0 -> 3.
    assert_eq!(outcome(&twins, &[5, 1, 0]), Outcome::Done(Ok(7_003)));
}

#[test]
fn let_else_waits_agrees() {
    let twins = twins!(let_else_waits(bob()));
    let coverage = check("let_else_waits", 4, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    // 3: no limit, the `else` waits for 9.
    assert_eq!(outcome(&twins, &[3, 9]), Outcome::Done(Ok(509)));
    // 7: limit 14, the branch waits for 1 and returns.
    assert_eq!(outcome(&twins, &[7, 1]), Outcome::Done(Ok(15)));
    // 4: limit 8; x = 2, z = 6: 8 + (2 + 8) + 6 + 3.
    assert_eq!(outcome(&twins, &[4, 2, 6]), Outcome::Done(Ok(27)));
}

#[test]
fn pair_kept_agrees() {
    let twins = twins!(pair_kept(bob()));
    let coverage = check("pair_kept", 2, &twins);
    assert!(coverage.ok > 0, "{coverage:?}");
    // 7 * (7 % 5 + 1) + 2.
    assert_eq!(outcome(&twins, &[7, 2]), Outcome::Done(Ok(23)));
}

#[test]
fn checkpoints_stay_small() {
    // The state of a suspended ping holds a session id and three integers.
    let mut driver = flow_runtime::testing::FlowDriver::new(generated::ping(bob(), 3))
        .checkpoint_every_step(true);
    driver.start().unwrap_or_else(|e| panic!("{e}"));
    let session = driver.opened()[0].id;
    for i in 0..3u32 {
        driver
            .deliver(session, &i)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(driver.result(), Some(&Ok(3)));
    let sizes = driver.checkpoint_sizes();
    assert_eq!(sizes.len(), 3);
    assert!(sizes.iter().all(|&n| n <= 48), "{sizes:?}");
}

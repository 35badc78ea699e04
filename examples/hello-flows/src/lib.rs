//! Two flows: `ping` sends numbers to a peer and adds up the echoes;
//! `pong` answers each number with itself.

use flow_runtime::prelude::*;

/// Sends 0, 1, .., rounds-1 to `peer` and returns the sum of the echoes.
#[flow]
pub async fn ping(ctx: &mut FlowContext, peer: Party, rounds: u32) -> Result<u64, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let mut total: u64 = 0;
    let mut i: u32 = 0;
    while i < rounds {
        let echo: u32 = session.send_and_receive::<u32>(&i).await?.validate(|n| {
            if n == i {
                Ok(n)
            } else {
                Err(FlowError::new("wrong echo"))
            }
        })?;
        total += u64::from(echo);
        i += 1;
    }
    Ok(total)
}

/// Answers every number the initiator sends with the same number.
#[flow]
pub async fn pong(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    loop {
        let n: u32 = session.receive::<u32>().await?.validate(Ok)?;
        session.send(&n)?;
    }
}

//! Membership as the user sees it: leaving a room, its member list, and rooms lost to a
//! removal or a departure. A lost room stays in the state (an invite can bring the user
//! back) but is skipped by catch-up, live updates and posting, each of which says what
//! happened instead of failing on the server's refusal.

use tonic::Code;

use super::Device;
use super::remote::Frame;
use crate::error::{Error, Result};
use crate::proto::secret::ChannelPairInfo;
use crate::state::Lost;
use crate::time::now_ms;
use crate::user::{self, UserRef};

/// One member of a room as the server lists them, with what this device trusts.
#[derive(Clone, Debug)]
pub struct Member {
    /// The member.
    pub user: UserRef,
    /// True for the room's owner (who may remove others).
    pub owner: bool,
    /// True for this device's user.
    pub me: bool,
    /// Key fingerprints (hex) this device trusts for them in this room; empty when none.
    pub trusted: Vec<String>,
    /// This device's pin of their key (None: not pinned yet; always None for oneself).
    pub pin: Option<crate::state::Pin>,
}

/// A room of this device with the server's view of it, when the server answered.
#[derive(Clone, Debug)]
pub struct RoomView {
    /// The pair id.
    pub pair_id: String,
    /// The room's name.
    pub name: String,
    /// The homeserver it lives on ("" = this device's).
    pub homeserver: String,
    /// Set when the user left or was removed.
    pub lost: Option<Lost>,
    /// The owner (named as this device's homeserver names users), when the user is a
    /// member and the server answered.
    pub owner: Option<UserRef>,
    /// The members, when the user is a member and the server answered.
    pub members: Option<Vec<UserRef>>,
}

/// The members of a pair as its homeserver lists and names them.
pub(crate) fn members_of(info: &ChannelPairInfo) -> Vec<UserRef> {
    if info.member_refs.is_empty() {
        // A server from before federation lists local members only.
        info.members.iter().map(|&m| user::local(m)).collect()
    } else {
        info.member_refs
            .iter()
            .map(|r| UserRef {
                homeserver: r.homeserver.clone(),
                user_id: r.user_id,
            })
            .collect()
    }
}

fn owner_of(info: &ChannelPairInfo) -> UserRef {
    UserRef {
        homeserver: info.owner_homeserver.clone(),
        user_id: info.owner,
    }
}

/// What the server's listing says of a departed pair (the remover named as this device's
/// homeserver names users).
fn lost_of(info: &ChannelPairInfo, frame: &Frame) -> Option<Lost> {
    let d = info.departed.as_ref()?;
    let at_ms = d.departed_at.as_ref().map_or_else(now_ms, |t| {
        t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
    });
    Some(Lost {
        removed: d.removed_by.is_some(),
        by: d.removed_by.as_ref().map(|r| {
            user::display(&frame.to_home(&UserRef {
                homeserver: r.homeserver.clone(),
                user_id: r.user_id,
            }))
        }),
        at_ms,
    })
}

fn pair_of(info: &ChannelPairInfo) -> &str {
    info.pair.as_ref().map_or("", |p| p.pair_id.as_str())
}

impl Device {
    /// The error for a room already marked lost, if it is.
    pub fn lost_error(&self, pair_id: &str) -> Option<Error> {
        let room = self.state.rooms.get(pair_id)?;
        let lost = room.lost.as_ref()?;
        Some(Error::RoomLost {
            pair_id: pair_id.to_string(),
            what: lost.describe(&room.name),
        })
    }

    /// Called when the server refused a room's stream with PERMISSION_DENIED: asks the
    /// server how the user departed, marks the room lost and returns the error to show.
    /// When the server still lists the user as a member, `refusal` is returned as is.
    pub(crate) async fn room_refused(&mut self, pair_id: &str, refusal: Error) -> Error {
        if refusal.code() != Some(Code::PermissionDenied) {
            return refusal;
        }
        let Ok(frame) = self.frame(pair_id) else {
            return refusal;
        };
        let listed = match self.api_for(pair_id).await {
            Ok(api) => api.list_channel_pairs(true).await,
            Err(e) => Err(e),
        };
        let lost = match listed {
            Ok(pairs) => match pairs.iter().find(|p| pair_of(p) == pair_id) {
                Some(info) if info.departed.is_none() => return refusal,
                Some(info) => lost_of(info, &frame),
                None => None,
            },
            Err(_) => None,
        };
        let lost = lost.unwrap_or(Lost {
            removed: true,
            by: None,
            at_ms: now_ms(),
        });
        self.mark_lost(pair_id, Some(lost));
        self.lost_error(pair_id).unwrap_or(refusal)
    }

    fn mark_lost(&mut self, pair_id: &str, lost: Option<Lost>) {
        if let Some(room) = self.state.rooms.get_mut(pair_id)
            && room.lost != lost
        {
            room.set_lost(lost);
        }
    }

    /// Notes that the server ended the live subscription of one of the room's streams
    /// with PERMISSION_DENIED; returns what to tell the user, once per loss (None when the
    /// room was already marked, or the server still lists the user).
    pub async fn stream_refused(
        &mut self,
        stream_id: &str,
        status: tonic::Status,
    ) -> Option<Error> {
        let (pair_id, _) = self.locate(stream_id)?;
        if self.lost_error(&pair_id).is_some() {
            return None;
        }
        let err = self
            .room_refused(&pair_id, Error::rpc("StreamMessagePosting", status))
            .await;
        matches!(err, Error::RoomLost { .. }).then_some(err)
    }

    /// Leaves a room: the server closes both streams to this user at once. The room stays
    /// on this device, marked as left. The remaining members should rotate its keys
    /// (`rotate`), or the user's old keys keep reading what they post.
    pub async fn leave(&mut self, room: &str) -> Result<String> {
        let pair_id = self.room(room)?.pair_id.clone();
        if let Some(e) = self.lost_error(&pair_id) {
            return Err(e);
        }
        let api = self.api_for(&pair_id).await?;
        if let Err(e) = api.leave_channel_pair(&pair_id).await {
            return Err(self.room_refused(&pair_id, e).await);
        }
        self.mark_lost(
            &pair_id,
            Some(Lost {
                removed: false,
                by: None,
                at_ms: now_ms(),
            }),
        );
        Ok(pair_id)
    }

    /// The room's members as the server lists them, owner first, with the keys this
    /// device trusts for each.
    pub async fn members(&mut self, room: &str) -> Result<Vec<Member>> {
        let pair_id = self.room(room)?.pair_id.clone();
        if let Some(e) = self.lost_error(&pair_id) {
            return Err(e);
        }
        let pairs = self
            .api_for(&pair_id)
            .await?
            .list_channel_pairs(false)
            .await?;
        let Some(info) = pairs.iter().find(|p| pair_of(p) == pair_id) else {
            let refusal = Error::rpc(
                "ListChannelPairs",
                tonic::Status::permission_denied("the server no longer lists you in this room"),
            );
            return Err(self.room_refused(&pair_id, refusal).await);
        };
        let owner = owner_of(info);
        let frame = self.frame(&pair_id)?;
        let me = frame.to_room(&self.me);
        let room = self.room(&pair_id)?;
        let mut members: Vec<Member> = members_of(info)
            .into_iter()
            .map(|u| {
                let home = frame.to_home(&u);
                Member {
                    owner: u == owner,
                    me: u == me,
                    pin: self.state.pins.get(&user::display(&home)).cloned(),
                    trusted: room
                        .trusted
                        .get(&user::display(&u))
                        .map(|s| s.iter().cloned().collect())
                        .unwrap_or_default(),
                    user: home,
                }
            })
            .collect();
        members.sort_by_key(|m| !m.owner);
        Ok(members)
    }

    /// Every room of this device with its homeserver's view of it (one listing per
    /// homeserver): members and owner, or how the user departed. Rooms are marked lost or
    /// joined again as the server says. When a homeserver cannot be asked, the device's
    /// own view of its rooms, and the (first) error.
    pub async fn rooms_overview(&mut self) -> (Vec<RoomView>, Option<Error>) {
        let mut servers: Vec<String> = self
            .state
            .rooms
            .values()
            .map(|r| r.homeserver.clone())
            .collect();
        servers.sort();
        servers.dedup();
        let mut listings = std::collections::HashMap::new();
        let mut error = None;
        for server in servers {
            let listed = match self.connection(&server).await {
                Ok(api) => api.list_channel_pairs(true).await,
                Err(e) => Err(e),
            };
            match listed {
                Ok(pairs) => {
                    listings.insert(server, pairs);
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        let mut views = Vec::new();
        for pair_id in self.state.rooms.keys().cloned().collect::<Vec<_>>() {
            let server = self.state.rooms[&pair_id].homeserver.clone();
            let frame = self.frame(&pair_id).unwrap_or_else(|_| Frame::local());
            let pairs = listings.get(&server);
            let info = pairs.and_then(|ps| ps.iter().find(|p| pair_of(p) == pair_id));
            match (pairs, info) {
                // A member again: the invite that brings the keys is processed by `accept`
                // or `listen`; until then the room is usable with the keys it has.
                (_, Some(info)) => self.mark_lost(&pair_id, lost_of(info, &frame)),
                // Neither a member nor a recorded departure (a server without them).
                (Some(_), None) if self.lost_error(&pair_id).is_none() => self.mark_lost(
                    &pair_id,
                    Some(Lost {
                        removed: true,
                        by: None,
                        at_ms: now_ms(),
                    }),
                ),
                _ => {}
            }
            let room = &self.state.rooms[&pair_id];
            let member_info = info.filter(|i| i.departed.is_none());
            let home = |u: UserRef| frame.to_home(&u);
            views.push(RoomView {
                pair_id: pair_id.clone(),
                name: room.name.clone(),
                homeserver: server,
                lost: room.lost.clone(),
                owner: member_info.map(|i| home(owner_of(i))),
                members: member_info.map(|i| members_of(i).into_iter().map(home).collect()),
            });
        }
        (views, error)
    }
}

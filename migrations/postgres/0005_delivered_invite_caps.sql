-- Caps on invites other homeservers deliver (DESIGN §9a, issue 20): a delivered invite is
-- pending while it is younger than federation.delivered_invites_window_secs, and a
-- delivery is refused when the peer already has federation.max_delivered_invites_per_invitee
-- pending for the invitee, or federation.max_delivered_invites_per_peer in total. These
-- indexes make both counts read only the pending rows of that peer (and invitee).
CREATE INDEX remote_invites_by_peer_time ON remote_invites (pair_homeserver, sent_at);
CREATE INDEX remote_invites_by_invitee_time ON remote_invites (to_user, pair_homeserver, sent_at);

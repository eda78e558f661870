-- SendInvite counts the invites one user has pending to another (max_pending_invites_per_sender):
-- invites from X to Y into pairs Y is still a member of. This index makes that count read
-- only X's invites to Y, not all of Y's.
CREATE INDEX invites_by_sender ON invites (to_user, from_user, pair_id);

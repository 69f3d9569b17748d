/** Live progress: a cli-progress bar on a terminal, plain periodic lines otherwise (CI, tests). */
import cliProgress from 'cli-progress';

export interface ProgressValues {
  placed: number;
  charges: number;
  emails: number;
  phase: string;
}

export class Progress {
  private readonly multi: cliProgress.MultiBar | undefined;
  private readonly bar: cliProgress.SingleBar | undefined;
  private timer: NodeJS.Timeout | undefined;
  private values: ProgressValues = { placed: 0, charges: 0, emails: 0, phase: 'starting' };

  constructor(private readonly total: number) {
    if (process.stdout.isTTY) {
      this.multi = new cliProgress.MultiBar(
        {
          format: ' {bar} {placed}/{total} orders | {charges} charged | {emails} emailed | {phase}',
          hideCursor: true,
          clearOnComplete: false,
          stopOnComplete: false,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar = this.multi.create(total, 0, this.values);
    } else {
      this.timer = setInterval(() => this.line(), 5_000);
    }
  }

  update(values: Partial<ProgressValues>): void {
    this.values = { ...this.values, ...values };
    this.bar?.update(this.values.emails, { ...this.values });
  }

  /** A chaos event or a milestone, printed above the bar. */
  event(message: string): void {
    const text = `${new Date().toISOString().slice(11, 19)}  ${message}`;
    if (this.multi) this.multi.log(`${text}\n`);
    else console.log(text);
  }

  private line(): void {
    const v = this.values;
    console.log(`  ${v.placed}/${this.total} placed, ${v.charges} charged, ${v.emails} emailed (${v.phase})`);
  }

  stop(): void {
    clearInterval(this.timer);
    this.multi?.stop();
  }
}
